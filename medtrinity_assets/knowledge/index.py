"""Faiss index over knowledge chunks, with a Parquet docstore and an integrity record.

An index folder holds:

- ``index.faiss``      written by ``faiss.write_index``;
- ``docstore.parquet`` the chunks, row ``i`` is Faiss id ``i``;
- ``embeddings.npy``   float32 chunk embeddings (``np.save(allow_pickle=False)``), row-aligned
                       with the docstore, reused by incremental rebuilds;
- ``index.json``       embedder name and dimension, index type and parameters (for IVF / HNSW
                       the search depth calibrated at build time and the recall@10 measured
                       for it, ``params["calibration"]``), count, the sha256 of every file
                       above and the chunk content hashes. Written last.

:func:`load_index` checks the sha256 of ``index.faiss`` *before* ``faiss.read_index`` and
refuses a mismatch, then applies the recorded search depth. Nothing is ever pickled.

How the Faiss index is chosen and tuned (exact, IVF, HNSW; the measured IVF defaults) is in
:mod:`medtrinity_assets.knowledge.faiss_index`, the search-depth calibration (recall@10 >= 0.95
against exact search on the index's own vectors) in
:mod:`medtrinity_assets.knowledge.calibration`; the files' writing and checking in
:mod:`medtrinity_assets.knowledge.index_files`; the reuse of a previous build's vectors in
:mod:`medtrinity_assets.knowledge.incremental`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from medtrinity_assets.core.storage import sha256_file
from medtrinity_assets.knowledge.faiss_index import (
    IndexConfig,
    apply_search_params,
    build_faiss_index,
    import_faiss,
)
from medtrinity_assets.knowledge.incremental import previous_embeddings, row_plan, write_embeddings
from medtrinity_assets.knowledge.index_files import (
    DOCSTORE_FILE,
    EMBEDDINGS_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    META_FILE,
    IndexIntegrityError,
    NpyRows,
    commit_file,
    load_embeddings,
    read_meta,
    tmp_beside,
    write_atomic,
)

__all__ = [
    "DOCSTORE_FILE",
    "EMBEDDINGS_FILE",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "META_FILE",
    "REQUIRED_CHUNK_COLUMNS",
    "IndexBuildResult",
    "IndexConfig",
    "IndexIntegrityError",
    "KnowledgeIndex",
    "build_index",
    "load_embeddings",
    "load_index",
    "read_meta",
]

REQUIRED_CHUNK_COLUMNS = ("chunk_id", "text", "content_hash")


@dataclass
class IndexBuildResult:
    out_dir: Path
    count: int
    reused: int
    embedded: int
    index_type: str
    params: dict
    embedder: str
    dim: int
    faiss_sha256: str
    seconds: float
    previous_note: str | None = None
    timings: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


@dataclass
class KnowledgeIndex:
    """A loaded, verified index folder."""

    path: Path
    faiss_index: Any
    docstore: pl.DataFrame
    meta: dict

    @property
    def embedder_name(self) -> str:
        return self.meta["embedder"]["name"]

    @property
    def dim(self) -> int:
        return int(self.meta["embedder"]["dim"])

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def index_type(self) -> str:
        return self.meta["index_type"]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search; returns (scores, row ids), ids -1 where fewer than k exist."""
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} != index dimension {self.dim}")
        if self.count == 0 or len(q) == 0:
            return np.zeros((len(q), k), np.float32), -np.ones((len(q), k), np.int64)
        return self.faiss_index.search(q, k)

    def embeddings(self, mmap: bool = False) -> np.ndarray:
        return load_embeddings(self.path, self.meta, mmap=mmap)


def _check_chunks(chunks: pl.DataFrame) -> None:
    """Refuse a chunks table without the required columns or with repeated chunk ids."""
    missing = [c for c in REQUIRED_CHUNK_COLUMNS if c not in chunks.columns]
    if missing:
        raise ValueError(f"chunks table lacks columns {missing}")
    if chunks["chunk_id"].n_unique() != chunks.height:
        raise ValueError("chunk_id values must be unique")


def _write_faiss(index: Any, path: Path) -> str:
    faiss = import_faiss()
    return write_atomic(path, lambda p: faiss.write_index(index, p))


def _faiss_from_file(embeddings_path: str, config: IndexConfig) -> tuple[Any, str, dict]:
    """Train and fill the Faiss index from an embeddings file, batch by batch."""
    source = NpyRows(embeddings_path)
    try:
        return build_faiss_index(source, config)
    finally:
        source.close()


def _write_meta(out: Path, meta: dict) -> None:
    write_atomic(out / META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=1), encoding="utf-8"))


def _index_meta(
    chunks: pl.DataFrame,
    name: str,
    dim: int,
    index_type: str,
    params: dict,
    files: dict[str, str],
    reused: int,
) -> dict:
    """The ``index.json`` record of a build."""
    return {
        "format_version": FORMAT_VERSION,
        "embedder": {"name": name, "dim": dim},
        "metric": "inner_product",
        "index_type": index_type,
        "params": params,
        "count": chunks.height,
        "faiss_sha256": files[INDEX_FILE],
        "files": files,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reused": reused,
        "embedded": chunks.height - reused,
        "content_hashes": chunks["content_hash"].to_list(),
    }


def build_index(
    chunks: pl.DataFrame,
    embedder: Any,
    out_dir: str | Path,
    previous_dir: str | Path | None = None,
    config: IndexConfig | None = None,
) -> IndexBuildResult:
    """Embed the chunks (reusing a previous build's vectors by content hash) and write the index.

    Streaming: rows are embedded (or copied from the previous build) ``config.build_batch`` at a
    time and appended to a temporary ``embeddings.npy``; the Faiss index is then trained on a
    sample and filled batch by batch from that file. Peak memory is the index itself plus a few
    batches, not the float32 matrix plus the index."""
    t0 = time.perf_counter()
    _check_chunks(chunks)
    config = config or IndexConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name, dim = str(embedder.name), int(embedder.dim)
    step = max(1, int(config.build_batch))

    prev, prev_hashes, note = previous_embeddings(previous_dir, name, dim)
    emb_tmp = tmp_beside(out / EMBEDDINGS_FILE)
    try:
        plan = row_plan(chunks, prev_hashes)
        t_embed = time.perf_counter()
        encode_s = write_embeddings(emb_tmp, chunks, embedder, dim, prev, plan, step)
        if prev is not None:
            prev.close()
            prev = None
        t_index = time.perf_counter()
        index, index_type, params = _faiss_from_file(emb_tmp, config)
        t_write = time.perf_counter()

        files = {INDEX_FILE: _write_faiss(index, out / INDEX_FILE)}
        del index  # free it before the docstore is written
        files[EMBEDDINGS_FILE] = commit_file(emb_tmp, out / EMBEDDINGS_FILE)
        files[DOCSTORE_FILE] = write_atomic(
            out / DOCSTORE_FILE, lambda p: chunks.write_parquet(p, compression="zstd")
        )
    except BaseException:
        Path(emb_tmp).unlink(missing_ok=True)
        raise
    finally:
        if prev is not None:
            prev.close()
    seconds = time.perf_counter() - t0
    _write_meta(out, _index_meta(chunks, name, dim, index_type, params, files, plan.reused))
    return IndexBuildResult(
        out_dir=out,
        count=chunks.height,
        reused=plan.reused,
        embedded=chunks.height - plan.reused,
        index_type=index_type,
        params=params,
        embedder=name,
        dim=dim,
        faiss_sha256=files[INDEX_FILE],
        seconds=seconds,
        previous_note=note,
        timings={
            "embed_s": round(t_index - t_embed, 3),
            "encode_s": round(encode_s, 3),
            "index_s": round(t_write - t_index, 3),
            "write_s": round(time.perf_counter() - t_write, 3),
        },
    )


def load_index(index_dir: str | Path) -> KnowledgeIndex:
    """Load a verified index: every file's sha256 must match ``index.json`` before it is read."""
    index_dir = Path(index_dir)
    meta = read_meta(index_dir)
    faiss_path = index_dir / INDEX_FILE
    if not faiss_path.exists():
        raise FileNotFoundError(f"{faiss_path} does not exist")
    actual = sha256_file(faiss_path)
    if actual != meta.get("faiss_sha256"):
        raise IndexIntegrityError(
            f"{faiss_path}: sha256 {actual[:16]}… does not match {META_FILE} "
            f"({str(meta.get('faiss_sha256'))[:16]}…): refusing to load"
        )
    doc_path = index_dir / DOCSTORE_FILE
    if sha256_file(doc_path) != meta["files"][DOCSTORE_FILE]:
        raise IndexIntegrityError(f"{doc_path}: sha256 does not match {META_FILE}: refusing to load")
    index = import_faiss().read_index(str(faiss_path))
    docstore = pl.read_parquet(doc_path)
    if (
        index.ntotal != meta["count"]
        or docstore.height != meta["count"]
        or index.d != meta["embedder"]["dim"]
    ):
        raise IndexIntegrityError(
            f"{index_dir}: count/dimension disagree (faiss {index.ntotal}x{index.d}, docstore "
            f"{docstore.height}, {META_FILE} {meta['count']}x{meta['embedder']['dim']})"
        )
    apply_search_params(index, meta["index_type"], meta.get("params", {}))
    return KnowledgeIndex(path=index_dir, faiss_index=index, docstore=docstore, meta=meta)
