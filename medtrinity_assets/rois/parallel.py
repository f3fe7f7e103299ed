"""ROIs of a large shard on several CPU cores: contiguous slices of its images, one in this
process and one per extra worker process, each with its own copy of the experts, merged back in
order.

``build_roi_set`` has no state that crosses images (each image's regions, attributes and relations
are its own), so the merged table is the serial one: same rows in the same order, counts summed.
It pays only past a few hundred images (a worker starts in about two seconds, loading torch and
the experts) and only on the CPU (one GPU is shared better by one process's batches).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.core.tables import ROI_SET
from medtrinity_assets.core.workers import in_workers
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.rois.build import RoiSetResult, build_roi_set

#: images below which one process is faster than starting more
MIN_PARALLEL_IMAGES = 400


def build_roi_set_parallel(
    images: pl.DataFrame,
    spec: SourceSpec,
    out: str | Path,
    *,
    experts_dir: str | Path,
    workers: int,
    device: str = "cpu",
    load_experts: Callable[..., list[Any]] | None = None,
) -> tuple[RoiSetResult, list[str]]:
    """``build_roi_set`` over ``images`` with ``workers`` processes (one when the shard is small or
    the device is not the CPU); returns the result and the names of the experts used."""
    from medtrinity_assets.segmentation import load_experts_for

    loader = load_experts or load_experts_for
    workers = max(1, int(workers))
    if workers == 1 or device != "cpu" or images.height < MIN_PARALLEL_IMAGES:
        experts = loader(spec, experts_dir, device=device)
        return build_roi_set(images, spec, out, experts=experts), [e.name for e in experts]
    bounds = [images.height * k // workers for k in range(workers + 1)]
    slices = [images.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    parts = in_workers(_slice_rois, [(s, spec, str(out), str(experts_dir), loader) for s in slices])
    return merge_results([r for r, _ in parts], images.height), parts[0][1]


def _slice_rois(images: pl.DataFrame, spec: SourceSpec, out: str, experts_dir: str,
                loader: Callable[..., list[Any]]) -> tuple[RoiSetResult, list[str]]:
    experts = loader(spec, experts_dir, device="cpu")
    return build_roi_set(images, spec, out, experts=experts), [e.name for e in experts]


def merge_results(results: list[RoiSetResult], n_images: int) -> RoiSetResult:
    """One result from the results of consecutive slices of a shard's images."""
    def summed(name: str) -> dict[str, int]:
        total: Counter = Counter()
        for r in results:
            total.update(getattr(r, name))
        return dict(total)

    frames = [r.rois for r in results if r.rois.height]
    return RoiSetResult(
        rois=pl.concat(frames) if frames else ROI_SET.empty(),
        counts_by_origin=summed("counts_by_origin"),
        counts_by_label=summed("counts_by_label"),
        flagged_counts=summed("flagged_counts"),
        dropped_counts=summed("dropped_counts"),
        n_images=n_images,
    )
