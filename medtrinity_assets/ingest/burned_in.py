"""Burned-in text in pixels: which images are scanned, and the redaction of one encoded slice.

Ultrasound frames, secondary captures and screenshots carry names, dates and institutions in
their pixels. An image is scanned when its DICOM header says ``BurnedInAnnotation: YES``, when
its modality is one that carries text (ultrasound; DICOM SC, OT, XC, ES), or when its source
asks for it (``burned_in_text: scan`` in the registry; ``none`` turns scanning off for a source
whose pixels are known clean). Each detected text box is blacked out in the stored image
(:func:`medtrinity_assets.privacy.pixels.redact_text`); an image whose text cannot be masked (no
OCR engine installed, text over much of the image) is quarantined with the reason, never kept
unchecked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtrinity_assets.core.vocabulary import canonical_modality
from medtrinity_assets.ingest.readers.base import InputRejected

#: DICOM modality codes whose images often carry burned-in text
TEXT_MODALITY_CODES = {"US", "SC", "OT", "XC", "ES", "IVUS"}
TEXT_MODALITIES = {"ultrasound"}
#: text boxes covering more of the image than this cannot be masked without losing the image
MAX_TEXT_SHARE = 0.35


def needs_scan(meta: dict[str, Any], modality: str, policy: str) -> bool:
    """Whether an image's pixels are scanned for text (see the module docstring)."""
    if policy == "none":
        return False
    if policy == "scan":
        return True
    return (
        str(meta.get("burned_in") or "").upper() == "YES"
        or str(meta.get("dicom_modality") or "").upper() in TEXT_MODALITY_CODES
        or canonical_modality(modality) in TEXT_MODALITIES
    )


def redact(image: np.ndarray) -> tuple[np.ndarray, int]:
    """The image with every text box blacked out, and the number of boxes; raises
    :class:`InputRejected` when that is not possible (the image is then quarantined)."""
    from medtrinity_assets.privacy.pixels import OcrFailed, OcrUnavailable, redact_text

    try:
        redacted, boxes = redact_text(image)
    except OcrUnavailable:
        raise InputRejected(
            "burned_in_text_unchecked",
            "this image may carry burned-in text and no OCR engine is installed: apt-get install "
            "tesseract-ocr, or set burned_in_text: none in the source's registry file if its pixels carry no text",
        ) from None
    except OcrFailed as exc:
        raise InputRejected("burned_in_text_unchecked", f"the OCR engine failed: {exc}") from None
    covered = float((redacted != image).any(axis=-1).mean() if image.ndim == 3 else (redacted != image).mean())
    if covered > MAX_TEXT_SHARE:
        raise InputRejected(
            "burned_in_text_unmaskable", f"text covers {covered:.0%} of the image (more than {MAX_TEXT_SHARE:.0%})"
        )
    return redacted, len(boxes)
