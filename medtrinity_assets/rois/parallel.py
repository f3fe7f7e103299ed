"""ROIs of a shard in slices of its images, on several CPU cores, one slice at a time in memory.

``build_roi_set`` has no state that crosses images (each image's regions, attributes and relations
are its own), so a shard's images are cut into consecutive slices of
:data:`~medtrinity_assets.core.workers.IMAGES_PER_SLICE`, each built alone and yielded in order:
the concatenated slices are the serial table, row for row, and a caller writes each slice as it
comes (row groups), so memory follows the slice, not the shard. On the CPU, past a few hundred
images, the slices are spread over this process and ``workers - 1`` worker processes (each loads
the experts once; a worker starts in about two seconds, loading torch and the experts); on a GPU
one process keeps the device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.core.tables import ROI_SET
from medtrinity_assets.core.workers import IMAGES_PER_SLICE, ordered_in_workers
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.rois.build import RoiSetResult, build_roi_set

#: images below which one process is faster than starting more
MIN_PARALLEL_IMAGES = 400

_LOADED: dict[tuple[str, str], list[Any]] = {}  # (source, experts folder) -> this process's experts


def roi_set_slices(
    images: pl.DataFrame,
    spec: SourceSpec,
    out: str | Path,
    *,
    experts_dir: str | Path,
    workers: int,
    device: str = "cpu",
    load_experts: Callable[..., list[Any]] | None = None,
    images_per_slice: int = IMAGES_PER_SLICE,
) -> tuple[list[str], Iterator[RoiSetResult]]:
    """The names of the experts used, and ``build_roi_set`` of consecutive slices of ``images``
    in order (see the module docstring)."""
    from medtrinity_assets.segmentation import load_experts_for

    loader = load_experts or load_experts_for
    experts = loader(spec, experts_dir, device=device)
    names = [e.name for e in experts]
    workers = max(1, int(workers))
    if workers == 1 or device != "cpu" or images.height < MIN_PARALLEL_IMAGES:
        workers = 1
    step = max(1, min(images_per_slice, -(-images.height // workers)))  # a small shard still fills the cores
    slices = [images.slice(a, step) for a in range(0, images.height, step)]
    return names, _results(slices, spec, out, str(experts_dir), loader, experts, workers)


def _results(slices: list[pl.DataFrame], spec: SourceSpec, out: str | Path, experts_dir: str,
             loader: Callable[..., list[Any]], experts: list[Any], workers: int) -> Iterator[RoiSetResult]:
    key = (spec.name, experts_dir)
    _LOADED[key] = experts  # this process's slices use the experts loaded above
    try:
        yield from ordered_in_workers(_slice_rois, [(s, spec, str(out), experts_dir, loader) for s in slices], workers)
    finally:
        _LOADED.pop(key, None)  # never reused by a later shard or run: the experts may have been retrained


def _slice_rois(images: pl.DataFrame, spec: SourceSpec, out: str, experts_dir: str,
                loader: Callable[..., list[Any]]) -> RoiSetResult:
    """One slice's ROIs with this process's experts (a worker loads them at its first slice)."""
    key = (spec.name, experts_dir)
    if key not in _LOADED:
        _LOADED[key] = loader(spec, experts_dir, device="cpu")
    return build_roi_set(images, spec, out, experts=_LOADED[key])


def build_roi_set_parallel(images: pl.DataFrame, spec: SourceSpec, out: str | Path, **options: Any,
                           ) -> tuple[RoiSetResult, list[str]]:
    """:func:`roi_set_slices` merged into one result (the whole table in memory), and the experts' names."""
    names, results = roi_set_slices(images, spec, out, **options)
    return merge_results(list(results), images.height), names


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
