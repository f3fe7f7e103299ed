"""Incremental embedding: a build embeds only chunks whose text no earlier vector covers.

Each row's vector is, in this order of preference, copied from a previous build of the same
embedder with the same content hash, copied from the first row of this table with the same
content hash, or embedded. Rows are written ``build_batch`` at a time to ``embeddings.npy``;
the previous build's vectors are read on demand, so neither matrix is ever held whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from medtrinity_assets.core.storage import sha256_file
from medtrinity_assets.knowledge.index_files import (
    EMBEDDINGS_FILE,
    META_FILE,
    IndexIntegrityError,
    NpyRows,
    read_meta,
    write_npy_header,
)


def previous_embeddings(
    previous_dir: str | Path | None, embedder_name: str, dim: int
) -> tuple[NpyRows | None, list[str] | None, str | None]:
    """(verified row reader, content hashes) of a previous build of the same embedder, or why none.

    The file's sha256 is checked against the previous ``index.json`` before any row is used;
    rows are then read on demand, so reuse never holds the previous matrix in memory."""
    if previous_dir is None:
        return None, None, None
    rows = None
    try:
        meta = read_meta(previous_dir)
        if meta["embedder"]["name"] != embedder_name or int(meta["embedder"]["dim"]) != dim:
            return (
                None,
                None,
                f"previous index used embedder {meta['embedder']['name']} ({meta['embedder']['dim']}d): not reused",
            )
        path = Path(previous_dir) / EMBEDDINGS_FILE
        if sha256_file(path) != meta["files"][EMBEDDINGS_FILE]:
            raise IndexIntegrityError(f"{path}: sha256 does not match {META_FILE}")
        rows = NpyRows(path)
        hashes = meta["content_hashes"]
        if (rows.n, rows.d) != (int(meta["count"]), dim) or len(hashes) != rows.n:
            rows.close()
            return None, None, "previous index: content hashes and embeddings disagree: not reused"
    except (FileNotFoundError, IndexIntegrityError, KeyError, ValueError, OSError) as exc:
        if rows is not None:
            rows.close()
        return None, None, f"previous index not reused: {exc}"
    return rows, hashes, None


@dataclass
class RowPlan:
    """Where each row of the chunks table gets its vector from."""

    prev_row: np.ndarray  # the previous build's row with the same content hash, -1: none
    first: np.ndarray  # the first row of this table with the same content hash
    multi: np.ndarray  # whether that content hash occurs more than once in this table

    @property
    def reused(self) -> int:
        """Rows copied from the previous build."""
        return int((self.prev_row >= 0).sum())


def row_plan(chunks: pl.DataFrame, previous_hashes: list[str] | None) -> RowPlan:
    """Per row: the previous build's row with the same content hash (-1: none), the first row of
    this table with the same hash, and whether that hash occurs more than once here."""
    n = chunks.height
    plan = (
        chunks.select("content_hash")
        .with_row_index("_row")
        .select(
            pl.col("_row").first().over("content_hash").cast(pl.Int64).alias("first"),
            (pl.len().over("content_hash") > 1).alias("multi"),
        )
    )
    prev_row = np.full(n, -1, dtype=np.int64)
    if previous_hashes:
        lookup = (
            pl.DataFrame({"content_hash": previous_hashes})
            .with_row_index("_prev", offset=0)
            .unique("content_hash", keep="first")
        )
        joined = (
            chunks.select("content_hash")
            .with_row_index("_row")
            .join(lookup, on="content_hash", how="left")
            .sort("_row")
        )
        prev_row = joined["_prev"].fill_null(-1).cast(pl.Int64).to_numpy()
    return RowPlan(prev_row=prev_row, first=plan["first"].to_numpy(), multi=plan["multi"].to_numpy())


def _fill_block(
    block: np.ndarray,
    s: int,
    texts: pl.Series,
    embedder: Any,
    previous: NpyRows | None,
    plan: RowPlan,
    shared: dict[int, np.ndarray],
) -> float:
    """Fill ``block`` with the vectors of rows ``s .. s + len(block)``; returns seconds spent encoding.

    ``shared`` maps the first row of each content hash repeated in this table to its vector; it
    is filled for the hashes embedded here and read by their later rows."""
    m, dim = block.shape
    encode_s = 0.0
    pr = plan.prev_row[s : s + m]
    hit = np.flatnonzero(pr >= 0)
    if len(hit):
        block[hit] = previous.take(pr[hit])
    rows = np.arange(s, s + m)
    fresh = np.flatnonzero((pr < 0) & (plan.first[s : s + m] == rows))
    if len(fresh):
        te = time.perf_counter()
        new = np.asarray(embedder.encode(texts.slice(s, m).gather(fresh).to_list()), dtype=np.float32)
        encode_s += time.perf_counter() - te
        if new.shape != (len(fresh), dim):
            raise ValueError(f"embedder returned {new.shape}, expected {(len(fresh), dim)}")
        block[fresh] = new
        for j in fresh[plan.multi[s + fresh]]:
            shared[s + int(j)] = block[j].copy()
    for j in np.flatnonzero((pr < 0) & (plan.first[s : s + m] != rows)):
        block[j] = shared[int(plan.first[s + j])]
    return encode_s


def write_embeddings(
    path: str,
    chunks: pl.DataFrame,
    embedder: Any,
    dim: int,
    previous: NpyRows | None,
    plan: RowPlan,
    step: int,
) -> float:
    """Write every row's vector to ``path`` as a float32 ``.npy``, ``step`` rows at a time.

    Returns the seconds spent in ``embedder.encode``."""
    n = chunks.height
    texts = chunks["text"]
    shared: dict[int, np.ndarray] = {}  # first row -> vector, for hashes repeated in this table
    encode_s = 0.0
    with open(path, "wb") as fh:
        write_npy_header(fh, n, dim)
        for s in range(0, n, step):
            block = np.empty((min(step, n - s), dim), dtype=np.float32)
            encode_s += _fill_block(block, s, texts, embedder, previous, plan, shared)
            fh.write(block.tobytes())
    return encode_s
