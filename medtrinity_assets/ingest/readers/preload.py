"""Imports and one-time set-up that every preprocessing worker needs, done once in the
forkserver so that each forked worker starts warm.

Without it, every pool worker imports pydicom (which pulls in its pixel-decoder plugins and an
HTTP stack) and discovers the decoder plugins on its first file: about 0.15 s per worker per
pool, which on a small source is a large share of the run. The packaged vocabulary (a YAML file and
the expressions compiled from it, which every header's modality is read against) is loaded here for
the same reason: about 0.09 s of each worker's first task, on every pool of every source. Importing
this module has no other effect; the main process never needs to.
"""

from __future__ import annotations

import nibabel  # noqa: F401 - imported for its side effect: the forkserver holds it
import pydicom  # noqa: F401
import pydicom.pixels
from PIL import Image
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

# Decoder plugins are found (entry points, availability checks) on first use of each syntax.
for _uid in (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
):
    try:
        _ = pydicom.pixels.get_decoder(_uid).is_available
    except NotImplementedError:  # pragma: no cover - depends on the pydicom version
        pass

Image.init()  # registers Pillow's format plugins (opening is still restricted by ``formats=``)

from medtrinity_assets.core.vocabulary import vocabulary  # noqa: E402
from medtrinity_assets.ingest.readers import layouts  # noqa: E402 - registers every reader

layouts()
vocabulary()
