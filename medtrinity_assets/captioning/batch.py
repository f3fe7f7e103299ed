"""Resumable caption batches: a cache keyed by ``inputs_hash`` and durable per-chunk part files.

Layout: the final table at ``table_path``; while a batch runs, each finished chunk is written
atomically as one Parquet file in ``<table_path>.parts/``. A killed run loses at most the chunk
in flight (for a streaming backend: the results not yet flushed plus the requests in
flight); a rerun reads the final table and the parts as its cache, computes only what is
missing, then consolidates everything into ``table_path`` (one row per ``(record_id, roi_id)``)
and removes the parts.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.captioning.backends.base import Captioner, CaptionResult, run_sync
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import FACETS
from medtrinity_assets.core.storage import write_parquet_atomic, write_parquet_batches_atomic
from medtrinity_assets.core.tables import CAPTION_BATCH
from medtrinity_assets.core.workers import collector_paused

logger = logging.getLogger(__name__)

FACET_COLUMNS = [f"facet_{k}" for k in FACETS]
CAPTION_COLUMNS = CAPTION_BATCH.columns


@dataclass
class BatchResult:
    table_path: Path
    total: int
    cached: int
    computed: int
    ok: int
    failed: int
    chunks_written: int
    duplicates_dropped: int = 0
    failed_keys: list[tuple[str, Any]] = field(default_factory=list)
    fallbacks: int = 0  # rows whose model description failed a check and hold the fallback's

    def count(self, rows: list[dict[str, Any]], *, cached: int, dropped: int) -> None:
        """Add one slice's final rows (``cached`` of them reused, ``dropped`` duplicate inputs)."""
        failed = [(r["record_id"], r["roi_id"]) for r in rows if r["status"] != "ok"]
        self.total += len(rows)
        self.cached += cached
        self.computed += len(rows) - cached
        self.ok += len(rows) - len(failed)
        self.failed += len(failed)
        self.failed_keys += failed
        self.duplicates_dropped += dropped
        self.fallbacks += sum(1 for r in rows if r.get("fallback_reason"))

    def as_metadata(self) -> dict[str, Any]:
        return {"total": self.total, "cached": self.cached, "computed": self.computed, "ok": self.ok,
                "failed": self.failed, "chunks_written": self.chunks_written, "fallbacks": self.fallbacks}


def parts_dir(table_path: str | Path) -> Path:
    table_path = Path(table_path)
    return table_path.with_name(table_path.name + ".parts")


def caption_rows_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Caption rows as a frame of the ``caption_batch`` contract (roi ids as strings)."""
    rows = [{**r, "roi_id": None if r["roi_id"] is None else str(r["roi_id"])} for r in rows]
    return CAPTION_BATCH.frame(rows)


def _row(item: CaptionInput, result: CaptionResult, captioner: Captioner, h: str, params_json: str) -> dict:
    facets = {k: (result.facets or {}).get(k) for k in FACETS} if result.status == "ok" else {}
    written_by = getattr(captioner, "fallback", captioner) if result.fallback_reason else captioner
    return {
        "record_id": item.record_id,
        "source": item.source,
        "roi_id": item.roi_id,
        "backend": written_by.name,
        "model": written_by.model,
        "params": params_json,
        "prompt_version": captioner.prompt_version,
        "inputs_hash": h,
        "retrieved_chunk_ids": item.chunk_ids,
        "text": result.text if result.status == "ok" else None,
        "facets": json.dumps(facets, ensure_ascii=False) if facets else None,
        **{f"facet_{k}": facets.get(k) for k in FACETS},
        "status": result.status,
        "error": result.error,
        "raw": result.raw,
        "fallback_reason": result.fallback_reason,
        "created_at": datetime.now(UTC),
    }


def cache_files(table_path: Path) -> list[Path]:
    """The files a batch may reuse rows from: the final table, then any part files."""
    files = [table_path] if table_path.exists() else []
    pdir = parts_dir(table_path)
    if pdir.exists():
        files.extend(sorted(p for p in pdir.glob("*.parquet") if not p.name.startswith(".")))
    return files


def _read_cached(files: list[Path], log: Any, hashes: list[str] | None = None) -> pl.DataFrame:
    """The best cached row per ``inputs_hash`` (ok rows win, then the newest): whole rows of
    ``hashes`` (filtered as the files are read), or only hash, status and time of every row."""
    frames = []
    for path in files:
        try:
            scan = pl.scan_parquet(path)
            if "inputs_hash" not in scan.collect_schema().names():
                continue
            if hashes is None:
                frames.append(scan.select("inputs_hash", "status", "created_at").collect())
            else:
                rows = scan.filter(pl.col("inputs_hash").is_in(hashes)).collect()
                frames.append(CAPTION_BATCH.validate(rows, where=str(path)))
        except Exception as exc:  # a torn file cannot exist (atomic writes), but never trust disk
            log.warning("ignoring unreadable caption part %s: %s", path.name, exc)
    if not frames:
        return pl.DataFrame(schema={"inputs_hash": pl.String, "status": pl.String, "created_at": pl.Datetime("us", "UTC")})
    rows = pl.concat(frames, how="diagonal_relaxed")
    return (
        rows.with_columns(_ok=pl.col("status") == "ok")
        .sort(["_ok", "created_at"], descending=True, nulls_last=True, maintain_order=True)
        .unique("inputs_hash", keep="first", maintain_order=True)
        .drop("_ok")
    )


def run_caption_batch(
    inputs: list[CaptionInput],
    captioner: Captioner,
    table_path: Path,
    *,
    chunk_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    log: Any = None,
    retry_failed: bool = True,
) -> BatchResult:
    """Caption every input not already captioned with the same inputs, durably, chunk by chunk
    (:func:`run_caption_slices` with one slice)."""
    return run_caption_slices([inputs], captioner, table_path, total=len({i.key for i in inputs}), chunk_size=chunk_size,
                              progress=progress, log=log, retry_failed=retry_failed)


def run_caption_slices(
    slices: Iterable[list[CaptionInput]],
    captioner: Captioner,
    table_path: Path,
    *,
    total: int,
    chunk_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    log: Any = None,
    retry_failed: bool = True,
) -> BatchResult:
    """Caption every input not already captioned with the same inputs, durably, chunk by chunk,
    holding one slice of inputs at a time; the table is written slice by slice (row groups).

    ``total`` (how many inputs, for progress) need not be exact. ``progress(done, total)`` is called
    after each slice's cache lookup and after every chunk. Failed rows in the cache are computed
    again unless ``retry_failed`` is False. Of the cached rows only hash and status are held; a
    slice's cached rows are read back when the slice is written.
    """
    log = log or logger
    table_path = Path(table_path)
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    files = cache_files(table_path)
    reusable = _reusable(_read_cached(files, log), retry_failed)
    log.info("caption batch: about %d inputs, %d reusable cached rows; computing with %s/%s",
             total, len(reusable), captioner.name, captioner.model or "-")
    writer = _PartWriter(captioner, parts_dir(table_path), json.dumps(captioner.params, sort_keys=True),
                         total=total, done=0, progress=progress, log=log)
    result = BatchResult(table_path=table_path, total=0, cached=0, computed=0, ok=0, failed=0, chunks_written=0)
    seen: set[tuple] = set()

    def frames() -> Iterator[pl.DataFrame]:
        for inputs in slices:
            # plain computation in this process makes garbage fast; a server's or a model's does not
            with collector_paused() if captioner.runs_in_workers else nullcontext():
                unique, dropped = _unique_inputs(inputs, log, seen)
                hashes = [captioner.inputs_hash(item) for item in unique]
                todo = [(item, h) for item, h in zip(unique, hashes, strict=True) if h not in reusable]
                writer.start_slice(len(unique) - len(todo))
                if todo:
                    captioner.see(unique)
                if todo and captioner.supports_streaming:
                    run_sync(_stream_in_chunks(captioner, todo, chunk_size, writer.flush))
                else:
                    _caption_in_chunks(captioner, todo, chunk_size, writer.flush)
                missing = [h for h in hashes if h not in writer.rows]
                cached = _read_cached(files, log, missing) if missing else None
                rows = _final_rows(unique, hashes, writer.rows, cached)
                result.count(rows, cached=len(unique) - len(todo), dropped=dropped)
                frame = caption_rows_frame(rows)
            yield frame

    write_parquet_batches_atomic(frames(), table_path, CAPTION_BATCH.empty())
    remove_parts(parts_dir(table_path))
    result.chunks_written = writer.chunks
    return result


@collector_paused()
def describe_slice(
    inputs: list[CaptionInput],
    captioner: Captioner,
    table_path: Path,
    cache: list[Path],
    *,
    chunk_size: int = 64,
    retry_failed: bool = True,
    log: Any = None,
) -> tuple[pl.DataFrame, int, int, int]:
    """One slice of a table's rows on its own (a worker process's share of
    :mod:`~medtrinity_assets.captioning.parallel_batch`): its inputs looked up in ``cache`` (the
    table's :func:`cache_files` as they stood before the shard's first slice: the parts the other
    slices write meanwhile hold other inputs, and reading them would cost each slice more than the
    last), the rest described in durable chunk parts. Returns the rows in input order, how many
    were cached, how many duplicate inputs were dropped and how many parts were written."""
    log = log or logger
    unique, dropped = _unique_inputs(inputs, log, set())
    hashes = [captioner.inputs_hash(item) for item in unique]
    cached = _read_cached(cache, log, hashes)
    reusable = _reusable(cached, retry_failed)
    todo = [(item, h) for item, h in zip(unique, hashes, strict=True) if h not in reusable]
    if todo:
        captioner.see(unique)
    writer = _PartWriter(captioner, parts_dir(table_path), json.dumps(captioner.params, sort_keys=True),
                         total=len(todo), done=0, progress=None, log=log)
    _caption_in_chunks(captioner, todo, chunk_size, writer.flush)
    rows = _final_rows(unique, hashes, writer.rows, cached)
    return caption_rows_frame(rows), len(unique) - len(todo), dropped, writer.chunks


def _reusable(cached: pl.DataFrame, retry_failed: bool) -> set[str]:
    """The input hashes whose cached rows are taken as they are: the ok ones, and the failed ones
    too unless ``retry_failed``."""
    return set((cached.filter(pl.col("status") == "ok") if retry_failed else cached)["inputs_hash"].to_list())


def _unique_inputs(inputs: list[CaptionInput], log: Any, seen: set[tuple]) -> tuple[list[CaptionInput], int]:
    """The inputs whose ``(record_id, roi_id)`` is not in ``seen`` (added to it; the first occurrence
    wins), and how many were dropped."""
    unique: list[CaptionInput] = []
    dropped = 0
    for item in inputs:
        if item.key in seen:
            dropped += 1
            continue
        seen.add(item.key)
        unique.append(item)
    if dropped:
        log.warning("%d duplicate (record_id, roi_id) inputs ignored", dropped)
    return unique, dropped


class _PartWriter:
    """Writes each finished chunk as one durable part file, then counts it as done."""

    def __init__(
        self,
        captioner: Captioner,
        pdir: Path,
        params_json: str,
        *,
        total: int,
        done: int,
        progress: Callable[[int, int], None] | None,
        log: Any,
    ) -> None:
        self.captioner = captioner
        self.pdir = pdir
        self.params_json = params_json
        self.total = total
        self.done = done
        self.progress = progress
        self.log = log
        self.rows: dict[str, dict[str, Any]] = {}  # inputs_hash -> row written in this slice
        self.chunks = 0

    def start_slice(self, cached: int) -> None:
        """A new slice whose first ``cached`` inputs need no computing."""
        self.rows = {}
        self.done += cached
        self.total = max(self.total, self.done)
        if self.progress:
            self.progress(self.done, self.total)

    def flush(self, chunk: list[tuple[CaptionInput, str]], results: list[CaptionResult]) -> None:
        captioner = self.captioner
        if len(results) != len(chunk):
            raise RuntimeError(f"captioner {captioner.name} returned {len(results)} results for {len(chunk)} inputs")
        rows = [_row(item, res, captioner, h, self.params_json) for (item, h), res in zip(chunk, results, strict=True)]
        part = self.pdir / f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        write_parquet_atomic(caption_rows_frame(rows), part)  # durable before it counts as done
        self.chunks += 1
        for r in rows:
            self.rows[r["inputs_hash"]] = r
        self.done += len(chunk)
        self.total = max(self.total, self.done)
        if self.progress:
            self.progress(self.done, self.total)
        n_failed = sum(r["status"] != "ok" for r in rows)
        self.log.info("caption chunk %d: %d captions (%d failed), %d/%d done",
                      self.chunks, len(rows), n_failed, self.done, self.total)


_Flush = Callable[[list[tuple[CaptionInput, str]], list[CaptionResult]], None]


async def _stream_in_chunks(
    captioner: Captioner, todo: list[tuple[CaptionInput, str]], chunk_size: int, flush: _Flush
) -> None:
    """Streaming backends: no barrier between chunks; results are flushed every ``chunk_size``."""
    buf: list[tuple[int, CaptionResult]] = []
    async for idx, res in captioner.astream([item for item, _ in todo]):
        buf.append((idx, res))
        if len(buf) >= chunk_size:
            flush([todo[i] for i, _ in buf], [r for _, r in buf])
            buf = []
    if buf:
        flush([todo[i] for i, _ in buf], [r for _, r in buf])


def _caption_in_chunks(
    captioner: Captioner, todo: list[tuple[CaptionInput, str]], chunk_size: int, flush: _Flush
) -> None:
    """Other backends: one ``caption`` call per chunk of ``chunk_size`` inputs, flushed in turn."""
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        flush(chunk, captioner.caption([item for item, _ in chunk]))


def _final_rows(
    unique: list[CaptionInput], hashes: list[str], new_rows: dict[str, dict[str, Any]],
    cached: pl.DataFrame | None,
) -> list[dict[str, Any]]:
    """One row per input, in input order: computed this run, else cached; with the input's roi id."""
    cache = {} if cached is None else {r["inputs_hash"]: r for r in cached.iter_rows(named=True)}
    final_rows = []
    for item, h in zip(unique, hashes, strict=True):
        row = new_rows.get(h) or dict(cache[h])
        row["roi_id"] = item.roi_id
        final_rows.append(row)
    return final_rows


def remove_parts(pdir: Path) -> None:
    """Delete the part files and their folder once the final table holds them."""
    if pdir.exists():
        for p in pdir.iterdir():
            p.unlink(missing_ok=True)
        try:
            pdir.rmdir()
        except OSError:
            pass
