"""The description checks of one shard, slice by slice, on several CPU cores.

The checks of one description read only its own inputs, except the containment between the
regions of one image (:func:`~medtrinity_assets.captioning.evidence.batch_evidence`), so a
shard's descriptions are checked in slices of whole images
(:func:`~medtrinity_assets.core.workers.image_slices`). Each slice is read, joined and
checked by one process from the tables on disk, so memory follows the slice, not the shard; the
slices come back in order, so the table is the same whatever the number of processes. A judge (a
model server) is called from this process only; a shard of few descriptions is checked in this
process alone (a worker costs about a second to start).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.captioning.inputs import describable_rois, read_caption_inputs
from medtrinity_assets.captioning.quality import check_captions
from medtrinity_assets.core.tables import CAPTION_BATCH
from medtrinity_assets.core.workers import IMAGES_PER_SLICE, image_slices, ordered_in_workers

#: description rows below which one process is faster than starting more
MIN_PARALLEL_ROWS = 2000


def check_shard(
    out: str | Path,
    part: str,
    *,
    phi_values: Any,
    judge: Any = None,
    workers: int = 1,
    images_per_slice: int = IMAGES_PER_SLICE,
) -> Iterator[pl.DataFrame]:
    """The quality rows of one shard's descriptions (``part``: its part name), one slice of
    images at a time, in ``roi_set`` order (see the module docstring)."""
    record_ids = describable_rois(out, part)
    rows = CAPTION_BATCH.read(out, part, columns=["record_id"]).height
    if judge is not None or rows < MIN_PARALLEL_ROWS:
        workers = 1
    slices = image_slices(record_ids, images_per_slice, workers)
    calls = [(str(out), part, ids, phi_values, judge) for ids in slices]
    yield from ordered_in_workers(check_images, calls, workers)


def check_images(out: str, part: str, record_ids: list[str], phi_values: Any, judge: Any = None) -> pl.DataFrame:
    """The quality rows of the descriptions of the images ``record_ids`` of one shard, in the
    caption table's order."""
    captions = CAPTION_BATCH.read_images(out, part, record_ids)
    inputs = {(i.record_id, i.roi_id): i for i in read_caption_inputs(out, part, record_ids)}
    return check_captions(captions, inputs, phi_values=phi_values, judge=judge)
