"""One shard's descriptions, slice by slice, on several CPU cores (a CPU-bound backend only).

A captioner whose work is plain computation in this process (the embedded one: it declares
``runs_in_workers``) describes a large shard on the compute resource's worker processes. Each
slice of whole images (:func:`~medtrinity_assets.core.workers.image_slices`) is read, hashed,
looked up in the cache, described and written as durable chunk parts by one process, from the
tables on disk; this process only writes the slices' rows, in order, into the table. So the table
is the one :func:`~medtrinity_assets.captioning.batch.run_caption_slices` writes alone, and a
killed run loses at most the chunks in flight (one per process), which a rerun reads back from
the parts like any other.

A slice's rows come back as a file (``<table>.slices/``), read when its turn comes, not through the
pool's pipe: results that finish ahead of their turn are held, and as frames of description text
they were held in this process, whose heap kept the memory after they were written (0.12 GB more
for the rest of a 64,000-image build; ``docs/ARCHITECTURE.md``, cores within a shard).

Handing out chunks instead (this process reading, hashing and joining every input) was measured
slower than one process: that serial work cost more than the captioning it handed out. Backends
that call a server or hold a model stay in one process (they are concurrent or on a device
already).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.captioning.backends.base import Captioner
from medtrinity_assets.captioning.batch import (
    BatchResult,
    cache_files,
    describe_slice,
    parts_dir,
    remove_parts,
)
from medtrinity_assets.captioning.inputs import read_caption_inputs
from medtrinity_assets.core.storage import write_parquet_batches_atomic
from medtrinity_assets.core.tables import CAPTION_BATCH
from medtrinity_assets.core.workers import IMAGES_PER_SLICE, image_slices, ordered_in_workers

logger = logging.getLogger(__name__)

#: ROIs below which one process is faster than starting more (a worker costs about a second)
MIN_PARALLEL_ROWS = 2000


def runs_in_workers(captioner: Captioner, rois: int, workers: int) -> bool:
    """Whether a shard of ``rois`` ROIs is described on ``workers`` processes."""
    return captioner.runs_in_workers and workers > 1 and rois >= MIN_PARALLEL_ROWS


def describe_shard_in_workers(
    out: str | Path,
    part: str,
    record_ids: list[str],
    captioner: Captioner,
    table_path: Path,
    *,
    workers: int,
    chunk_size: int = 64,
    images_per_slice: int = IMAGES_PER_SLICE,
    progress: Callable[[int, int], None] | None = None,
    retry_failed: bool = True,
) -> BatchResult:
    """The caption table of one shard (``record_ids``: its describable ROIs' images, in ``roi_set``
    order), described slice by slice on this process and ``workers - 1`` others (see the module
    docstring); ``progress(done, total)`` after each slice."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    table_path = Path(table_path)
    slices = image_slices(record_ids, images_per_slice, workers)
    cache = cache_files(table_path)
    handoff = _handoff_dir(table_path)
    shutil.rmtree(handoff, ignore_errors=True)
    handoff.mkdir(parents=True)
    calls = [(str(out), part, ids, captioner, str(table_path), cache, chunk_size, retry_failed, str(handoff / f"{k:06d}.parquet"))
             for k, ids in enumerate(slices)]
    result = BatchResult(table_path=table_path, total=0, cached=0, computed=0, ok=0, failed=0, chunks_written=0)

    def frames() -> Iterator[pl.DataFrame]:
        for path, cached, dropped, chunks in ordered_in_workers(describe_images, calls, workers):
            frame = pl.read_parquet(path)
            Path(path).unlink()
            result.count(frame.select("record_id", "roi_id", "status", "fallback_reason").to_dicts(),
                         cached=cached, dropped=dropped)
            result.chunks_written += chunks
            if progress:
                progress(result.total, max(len(record_ids), result.total))
            yield frame

    write_parquet_batches_atomic(frames(), table_path, CAPTION_BATCH.empty())
    shutil.rmtree(handoff, ignore_errors=True)
    remove_parts(parts_dir(table_path))
    return result


def describe_images(
    out: str, part: str, record_ids: list[str], captioner: Captioner, table_path: str, cache: list[Path],
    chunk_size: int, retry_failed: bool, handoff: str,
) -> tuple[str, int, int, int]:
    """The caption rows of the images ``record_ids`` of one shard, in input order, written to the file
    ``handoff`` (a slice's rows travel through the disk, not the pipe: the writing process holds one
    slice at a time, not every slice finished ahead of its turn), with how many were cached (in
    ``cache``), how many duplicate inputs were dropped and how many chunk parts were written."""
    frame, cached, dropped, chunks = describe_slice(read_caption_inputs(out, part, record_ids), captioner,
                                                    Path(table_path), cache, chunk_size=chunk_size,
                                                    retry_failed=retry_failed, log=_Quiet())
    frame.write_parquet(handoff)
    return handoff, cached, dropped, chunks


def _handoff_dir(table_path: Path) -> Path:
    """Where the slices of one table wait for their turn (removed when the table is written)."""
    return table_path.with_name(table_path.name + ".slices")


class _Quiet:
    """A worker's chunk log: the shard's progress is reported per slice by the process that
    writes the table (a worker's own log would reach no run's log)."""

    def info(self, *args: Any) -> None:
        pass

    def warning(self, msg: str, *args: Any) -> None:
        logger.warning(msg, *args)
