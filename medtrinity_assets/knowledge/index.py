"""Faiss index over knowledge chunks, with a Parquet docstore and an integrity record.

An index folder holds:

- ``index.faiss``      written by ``faiss.write_index``;
- ``docstore.parquet`` the chunks, row ``i`` is Faiss id ``i``;
- ``embeddings.npy``   float32 chunk embeddings (``np.save(allow_pickle=False)``), row-aligned
                       with the docstore, reused by incremental rebuilds;
- ``index.json``       embedder name and dimension, index type and parameters, count, the
                       sha256 of every file above and the chunk content hashes. Written last.

:func:`load_index` checks the sha256 of ``index.faiss`` *before* ``faiss.read_index`` and
refuses a mismatch. Nothing is ever pickled.

Index choice: exact inner product (``IndexFlatIP``) up to ``IndexConfig.exact_max`` vectors
(default 50,000); above that HNSW (default) or IVF. Vectors are L2-normalised, so inner
product is cosine similarity.

Why IVF by default above the threshold (benchmarks/retrieval.py, 200k x 384, 2 CPU threads):
IVF-Flat builds in ~14 s against ~200 s for HNSW (M=32, efConstruction=128) and, on
structured (clustered) vectors, reaches recall@10 0.9995 at 15x the exact query rate
(nprobe=8) where HNSW reaches 0.996 at 8.9x (efSearch=32). HNSW stays available
(``approximate="hnsw"``, with ``hnsw_storage="sq8"`` to hold 1M vectors in ~0.6 GiB).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from medtrinity_assets.storage import sha256_file

INDEX_FILE = "index.faiss"
DOCSTORE_FILE = "docstore.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
META_FILE = "index.json"
FORMAT_VERSION = 1
REQUIRED_CHUNK_COLUMNS = ("chunk_id", "text", "content_hash")


class IndexIntegrityError(RuntimeError):
    """An index folder does not match its ``index.json`` record."""


@dataclass
class IndexConfig:
    """How the Faiss index is chosen and tuned."""

    exact_max: int = 50_000
    approximate: Literal["hnsw", "ivf"] = "ivf"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 128
    hnsw_ef_search: int = 128
    hnsw_storage: Literal["flat", "fp16", "sq8"] = "flat"
    ivf_nlist: int | None = None  # default: 4 * sqrt(n)
    ivf_nprobe: int | None = None  # default: nlist / 32 (at least 16)
    ivf_train_max: int = 100_000
    seed: int = 0


def _faiss():
    import faiss

    return faiss


def make_faiss_index(vectors: np.ndarray, config: IndexConfig | None = None) -> tuple[Any, str, dict]:
    """Build and fill a Faiss index for unit vectors; returns (index, type name, parameters)."""
    faiss = _faiss()
    config = config or IndexConfig()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n <= config.exact_max:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, "flat_ip", {"exact_max": config.exact_max}
    if config.approximate == "hnsw":
        metric = faiss.METRIC_INNER_PRODUCT
        if config.hnsw_storage == "flat":
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, metric)
        else:
            qtype = (
                faiss.ScalarQuantizer.QT_8bit
                if config.hnsw_storage == "sq8"
                else faiss.ScalarQuantizer.QT_fp16
            )
            index = faiss.IndexHNSWSQ(d, qtype, config.hnsw_m, metric)
            index.train(x[: min(n, config.ivf_train_max)])
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.add(x)
        index.hnsw.efSearch = config.hnsw_ef_search
        params = {
            "M": config.hnsw_m,
            "efConstruction": config.hnsw_ef_construction,
            "efSearch": config.hnsw_ef_search,
            "storage": config.hnsw_storage,
        }
        return index, f"hnsw_{config.hnsw_storage}_ip", params
    nlist = config.ivf_nlist or max(1, int(round(4 * math.sqrt(n))))
    nprobe = config.ivf_nprobe or max(16, nlist // 32)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(config.seed)
    train_n = min(n, max(config.ivf_train_max, 39 * nlist))
    sample = x if train_n >= n else x[np.sort(rng.choice(n, train_n, replace=False))]
    index.train(sample)
    index.add(x)
    index.nprobe = nprobe
    return index, "ivf_flat_ip", {"nlist": nlist, "nprobe": nprobe, "train_size": int(len(sample))}


def apply_search_params(index: Any, index_type: str, params: dict) -> None:
    """Re-apply query-time parameters after loading (efSearch, nprobe)."""
    if index_type.startswith("hnsw") and "efSearch" in params:
        index.hnsw.efSearch = int(params["efSearch"])
    elif index_type.startswith("ivf") and "nprobe" in params:
        index.nprobe = int(params["nprobe"])


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


def _atomic(path: Path, writer) -> str:
    """Write through ``writer(tmp_path)`` then rename into place; returns the file's sha256."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)


def load_embeddings(index_dir: str | Path, meta: dict | None = None, mmap: bool = False) -> np.ndarray:
    """The stored embeddings (sha256-checked against ``index.json``), never unpickled."""
    index_dir = Path(index_dir)
    meta = meta or read_meta(index_dir)
    path = index_dir / EMBEDDINGS_FILE
    if sha256_file(path) != meta["files"][EMBEDDINGS_FILE]:
        raise IndexIntegrityError(f"{path}: sha256 does not match {META_FILE}")
    arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape != (meta["count"], meta["embedder"]["dim"]):
        raise IndexIntegrityError(f"{path}: unexpected array {arr.dtype} {arr.shape}")
    return arr


def read_meta(index_dir: str | Path) -> dict:
    path = Path(index_dir) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: no index was built here")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexIntegrityError(f"{path}: unreadable: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexIntegrityError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


def _previous_embeddings(
    previous_dir: str | Path | None, embedder_name: str, dim: int
) -> tuple[dict[str, np.ndarray], str | None]:
    """content_hash -> embedding from a previous build of the same embedder (or why none)."""
    if previous_dir is None:
        return {}, None
    try:
        meta = read_meta(previous_dir)
        if meta["embedder"]["name"] != embedder_name or int(meta["embedder"]["dim"]) != dim:
            return (
                {},
                f"previous index used embedder {meta['embedder']['name']} ({meta['embedder']['dim']}d): not reused",
            )
        emb = load_embeddings(previous_dir, meta)
        hashes = meta["content_hashes"]
        if len(hashes) != len(emb):
            return {}, "previous index: content hashes and embeddings disagree: not reused"
    except (FileNotFoundError, IndexIntegrityError, KeyError, ValueError, OSError) as exc:
        return {}, f"previous index not reused: {exc}"
    return {h: emb[i] for i, h in enumerate(hashes)}, None


def build_index(
    chunks: pl.DataFrame,
    embedder: Any,
    out_dir: str | Path,
    previous_dir: str | Path | None = None,
    config: IndexConfig | None = None,
) -> IndexBuildResult:
    """Embed the chunks (reusing a previous build's vectors by content hash) and write the index."""
    t0 = time.perf_counter()
    missing = [c for c in REQUIRED_CHUNK_COLUMNS if c not in chunks.columns]
    if missing:
        raise ValueError(f"chunks table lacks columns {missing}")
    if chunks["chunk_id"].n_unique() != chunks.height:
        raise ValueError("chunk_id values must be unique")
    config = config or IndexConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name, dim = str(embedder.name), int(embedder.dim)

    cache, note = _previous_embeddings(previous_dir, name, dim)
    hashes = chunks["content_hash"].to_list()
    texts = chunks["text"].to_list()
    vectors = np.zeros((len(hashes), dim), dtype=np.float32)
    reused = 0
    to_embed: dict[str, list[int]] = {}
    first_text: dict[str, str] = {}
    for i, h in enumerate(hashes):
        if h in cache:
            vectors[i] = cache[h]
            reused += 1
        else:
            to_embed.setdefault(h, []).append(i)
            first_text.setdefault(h, texts[i])
    t_embed = time.perf_counter()
    if to_embed:
        order = list(to_embed)
        new = np.asarray(embedder.encode([first_text[h] for h in order]), dtype=np.float32)
        if new.shape != (len(order), dim):
            raise ValueError(f"embedder returned {new.shape}, expected {(len(order), dim)}")
        for h, v in zip(order, new, strict=True):
            vectors[to_embed[h]] = v
    embedded = len(hashes) - reused
    t_index = time.perf_counter()
    index, index_type, params = make_faiss_index(vectors, config)
    t_write = time.perf_counter()

    faiss = _faiss()
    files = {
        INDEX_FILE: _atomic(out / INDEX_FILE, lambda p: faiss.write_index(index, p)),
        EMBEDDINGS_FILE: _atomic(out / EMBEDDINGS_FILE, lambda p: _save_npy(p, vectors)),
        DOCSTORE_FILE: _atomic(out / DOCSTORE_FILE, lambda p: chunks.write_parquet(p, compression="zstd")),
    }
    seconds = time.perf_counter() - t0
    meta = {
        "format_version": FORMAT_VERSION,
        "embedder": {"name": name, "dim": dim},
        "metric": "inner_product",
        "index_type": index_type,
        "params": params,
        "count": len(hashes),
        "faiss_sha256": files[INDEX_FILE],
        "files": files,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reused": reused,
        "embedded": embedded,
        "content_hashes": hashes,
    }
    _atomic(out / META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=1), encoding="utf-8"))
    return IndexBuildResult(
        out_dir=out,
        count=len(hashes),
        reused=reused,
        embedded=embedded,
        index_type=index_type,
        params=params,
        embedder=name,
        dim=dim,
        faiss_sha256=files[INDEX_FILE],
        seconds=seconds,
        previous_note=note,
        timings={
            "embed_s": round(t_index - t_embed, 3),
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
    index = _faiss().read_index(str(faiss_path))
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
