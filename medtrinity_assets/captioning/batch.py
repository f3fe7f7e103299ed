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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.captioning.backends.base import Captioner, CaptionResult, run_sync
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import FACETS
from medtrinity_assets.core.storage import write_parquet_atomic
from medtrinity_assets.core.tables import CAPTION_BATCH

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


def _read_cache(table_path: Path, log: Any) -> dict[str, dict[str, Any]]:
    """inputs_hash -> row, from the final table and any part files (ok rows win, newest first)."""
    frames = []
    if table_path.exists():
        frames.append(table_path)
    pdir = parts_dir(table_path)
    if pdir.exists():
        frames.extend(sorted(p for p in pdir.glob("*.parquet") if not p.name.startswith(".")))
    cache: dict[str, dict[str, Any]] = {}
    for path in frames:
        try:
            df = pl.read_parquet(path)
        except Exception as exc:  # a torn file cannot exist (atomic writes), but never trust disk
            log.warning("ignoring unreadable caption part %s: %s", path.name, exc)
            continue
        if "inputs_hash" not in df.columns:
            continue
        for row in df.iter_rows(named=True):
            h = row["inputs_hash"]
            old = cache.get(h)
            if old is None or (row["status"] == "ok" and old["status"] != "ok") or (
                row["status"] == old["status"] and row["created_at"] and old["created_at"]
                and row["created_at"] > old["created_at"]
            ):
                cache[h] = row
    return cache


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
    """Caption every input not already captioned with the same inputs, durably, chunk by chunk.

    ``progress(done, total)`` is called after the cache scan and after every chunk. Failed rows
    in the cache are computed again unless ``retry_failed`` is False.
    """
    log = log or logger
    table_path = Path(table_path)
    pdir = parts_dir(table_path)
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    unique, dropped = _unique_inputs(inputs, log)

    params_json = json.dumps(captioner.params, sort_keys=True)
    hashes = [captioner.inputs_hash(item) for item in unique]
    cache = _read_cache(table_path, log)
    todo = _to_compute(unique, hashes, cache, retry_failed)
    total = len(unique)
    cached = total - len(todo)
    log.info("caption batch: %d inputs, %d cached, %d to compute with %s/%s",
             total, cached, len(todo), captioner.name, captioner.model or "-")
    if progress:
        progress(cached, total)

    writer = _PartWriter(captioner, pdir, params_json, total=total, done=cached, progress=progress, log=log)
    if todo and captioner.supports_streaming:
        run_sync(_stream_in_chunks(captioner, todo, chunk_size, writer.flush))
    else:
        _caption_in_chunks(captioner, todo, chunk_size, writer.flush)

    final_rows = _final_rows(unique, hashes, writer.rows, cache)
    write_parquet_atomic(caption_rows_frame(final_rows), table_path)
    _remove_parts(pdir)
    failed_keys = [(r["record_id"], r["roi_id"]) for r in final_rows if r["status"] != "ok"]
    return BatchResult(
        table_path=table_path,
        total=total,
        cached=cached,
        computed=len(todo),
        ok=total - len(failed_keys),
        failed=len(failed_keys),
        chunks_written=writer.chunks,
        duplicates_dropped=dropped,
        failed_keys=failed_keys,
        fallbacks=sum(1 for r in final_rows if r.get("fallback_reason")),
    )


def _unique_inputs(inputs: list[CaptionInput], log: Any) -> tuple[list[CaptionInput], int]:
    """One input per ``(record_id, roi_id)``, the first occurrence winning; and how many were dropped."""
    seen: set[tuple] = set()
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


def _to_compute(
    unique: list[CaptionInput], hashes: list[str], cache: dict[str, dict[str, Any]], retry_failed: bool
) -> list[tuple[CaptionInput, str]]:
    """(input, inputs_hash) of every input the cache cannot answer (failed rows too, if retried)."""
    reusable = {h for h, row in cache.items() if row["status"] == "ok" or not retry_failed}
    return [(item, h) for item, h in zip(unique, hashes, strict=True) if h not in reusable]


_Flush = Callable[[list[tuple[CaptionInput, str]], list[CaptionResult]], None]


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
        self.rows: dict[str, dict[str, Any]] = {}  # inputs_hash -> row written this run
        self.chunks = 0

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
        if self.progress:
            self.progress(self.done, self.total)
        n_failed = sum(r["status"] != "ok" for r in rows)
        self.log.info("caption chunk %d: %d captions (%d failed), %d/%d done",
                      self.chunks, len(rows), n_failed, self.done, self.total)


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
    cache: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per input, in input order: computed this run, else cached; with the input's roi id."""
    final_rows = []
    for item, h in zip(unique, hashes, strict=True):
        row = new_rows.get(h) or dict(cache[h])
        row["roi_id"] = item.roi_id
        final_rows.append(row)
    return final_rows


def _remove_parts(pdir: Path) -> None:
    """Delete the part files and their folder once the final table holds them."""
    if pdir.exists():
        for p in pdir.iterdir():
            p.unlink(missing_ok=True)
        try:
            pdir.rmdir()
        except OSError:
            pass
