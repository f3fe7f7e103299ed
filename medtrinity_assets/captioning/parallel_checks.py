"""Description checks of a large shard on several CPU cores.

The checks of one description read only its own inputs, except the containment between the
regions of one image (:func:`~medtrinity_assets.captioning.evidence.batch_evidence`), so the rows
are cut into slices of whole images (consecutive record ids, in order of first appearance), each
checked by a worker process, and put back in the original order: the table is the one
:func:`check_captions` makes in one process. A judge (a model server) is called from one process
only; small tables are checked in place (a worker costs about a second to start).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.quality import check_captions
from medtrinity_assets.core.workers import in_workers

#: description rows below which one process is faster than starting more
MIN_PARALLEL_ROWS = 2000
_INDEX = "_row"


def check_captions_parallel(
    captions: pl.DataFrame,
    inputs: dict[tuple[str, Any], CaptionInput],
    *,
    phi_values: Any,
    judge: Any = None,
    workers: int = 1,
) -> pl.DataFrame:
    """:func:`check_captions` over ``workers`` processes (see the module docstring)."""
    workers = max(1, int(workers))
    if workers == 1 or judge is not None or captions.height < MIN_PARALLEL_ROWS:
        return check_captions(captions, inputs, phi_values=phi_values, judge=judge)
    rows = captions.with_row_index(_INDEX)
    images = rows["record_id"].unique(maintain_order=True).to_list()
    bounds = [len(images) * k // workers for k in range(workers + 1)]
    groups = [set(images[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    slices = [rows.filter(pl.col("record_id").is_in(list(g))) for g in groups]
    their_inputs = [{k: v for k, v in inputs.items() if k[0] in g} for g in groups]
    checked = in_workers(_check_slice, [(s.drop(_INDEX), i, phi_values) for s, i in zip(slices, their_inputs, strict=True)])
    merged = pl.concat([c.with_columns(s[_INDEX]) for c, s in zip(checked, slices, strict=True)])
    return merged.sort(_INDEX).drop(_INDEX)


def _check_slice(captions: pl.DataFrame, inputs: dict, phi_values: Any) -> pl.DataFrame:
    return check_captions(captions, inputs, phi_values=phi_values)
