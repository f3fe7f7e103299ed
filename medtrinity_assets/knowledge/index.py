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
(default 50,000); above that IVF (default) or HNSW. Vectors are L2-normalised, so inner
product is cosine similarity.

IVF defaults (benchmarks/retrieval.py, 200k x 384, 1,000 queries, 2 shared CPU threads):
``nlist = 4 * sqrt(n)`` (1,789 at 200k, 4,000 at 1M) and ``NPROBE_RULE``:
``nprobe = max(8, ceil(nlist / 256))`` (8 at 200k, 16 at 1M: 0.4-0.45 % of the cells).
Measured recall@10 against exact / query-rate ratio to exact at 200k:
real-anchored (centres = MiniLM corpus-sentence embeddings): nprobe 8 1.000 / 16.5x,
16 1.000 / 9.7x, 32 1.000 / 5.3x; clustered, 2,000 centres: nprobe 8 0.9995 / 43x (15x in an
earlier run), 16 0.9996 / 23x, 32 0.9997 / 9.9x; clustered, 200 centres: nprobe 8 0.986,
12 0.999, 16 1.000. The exact rate on 2 shared threads varied 280-1,230 q/s between runs;
the IVF rate at nprobe 8 was 12-18k q/s. nprobe 16 fell just under 10x once exact ran
uncontended, so the default is the smallest nprobe that kept recall >= 0.95 on all structured
sets. The old default max(16, nlist / 32) (55 at 200k) cost 3.5-4.75x. Uniform random vectors
(no neighbour structure: 0.04 at nprobe 8) and clusters smaller than the 10 neighbours asked
for (20,000 centres at 200k: 0.53 at nprobe 8) stay far below 0.95 at any useful nprobe: that
is the data, not the rule; raise ``ivf_nprobe`` or use exact search for such data.

Storage: ``ivf_storage="auto"`` keeps float32 vectors (IVF-Flat) up to ``ivf_flat_max``
(500,000) and 8-bit scalar-quantised vectors (IVF-SQ8, 384 B/vector at 384d, 0.37 GiB at 1M)
above; SQ8 cost 1.5-2 points of recall@10 (0.985 / 0.966 at nprobe 8, 2,000 / 200 centres).
Builds stream (see :func:`build_index`): the float32 matrix is never held in memory whole, so a
1M-chunk build peaks at the index + docstore + a few batches (``--million`` measures it).
HNSW stays available (``approximate="hnsw"``, ``hnsw_storage="sq8"``); it builds ~15x slower.
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

from medtrinity_assets.core.storage import sha256_file

INDEX_FILE = "index.faiss"
DOCSTORE_FILE = "docstore.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
META_FILE = "index.json"
FORMAT_VERSION = 1
REQUIRED_CHUNK_COLUMNS = ("chunk_id", "text", "content_hash")


class IndexIntegrityError(RuntimeError):
    """An index folder does not match its ``index.json`` record."""


# Default IVF probe count (see the module docstring for the measurements behind it).
NPROBE_FRACTION = 1 / 256
NPROBE_MIN = 8
NPROBE_RULE = "nprobe = max(8, ceil(nlist / 256)), capped at nlist"


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
    ivf_nprobe: int | None = None  # default: NPROBE_RULE (default_nprobe)
    # how IVF stores vectors: float32 ("flat", 1,536 B/vector at 384d), "fp16" (768 B) or 8-bit
    # scalar quantised ("sq8", 384 B); "auto" = flat up to ivf_flat_max vectors, sq8 above.
    ivf_storage: Literal["auto", "flat", "fp16", "sq8"] = "auto"
    ivf_flat_max: int = 500_000
    ivf_train_max: int = 100_000
    build_batch: int = 16_384  # rows embedded / read / added per step of a build
    seed: int = 0


def _faiss():
    import faiss

    return faiss


def default_nlist(n: int) -> int:
    """IVF cell count: 4 * sqrt(n) (about 1,789 at 200k, 4,000 at 1M)."""
    return max(1, int(round(4 * math.sqrt(n))))


def default_nprobe(nlist: int) -> int:
    """IVF cells scanned per query: ``NPROBE_RULE``, measured at 200k (see module docstring)."""
    return min(nlist, max(NPROBE_MIN, int(math.ceil(nlist * NPROBE_FRACTION))))


def resolve_ivf_storage(n: int, config: IndexConfig) -> str:
    if config.ivf_storage != "auto":
        return config.ivf_storage
    return "flat" if n <= config.ivf_flat_max else "sq8"


class _ArrayRows:
    """Rows of an in-memory matrix."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.n, self.d = x.shape

    def take(self, idx: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.x[idx], dtype=np.float32)

    def batches(self, size: int):
        for s in range(0, self.n, size):
            yield np.ascontiguousarray(self.x[s : s + size], dtype=np.float32)

    def close(self) -> None:
        pass


class _NpyRows:
    """Rows of a float32 C-order ``.npy`` file, read with ``pread`` (never mmap, never unpickled).

    Plain reads land in the page cache, not in this process's resident set, so streaming a
    1.4 GiB embedding file through the index build costs one batch of RAM, not the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.fh = open(self.path, "rb")
        try:
            version = np.lib.format.read_magic(self.fh)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = reader(self.fh)
        except BaseException:
            self.fh.close()
            raise
        if dtype != np.float32 or fortran or len(shape) != 2:
            self.fh.close()
            raise IndexIntegrityError(f"{self.path}: unexpected array {dtype} {shape} fortran={fortran}")
        self.n, self.d = int(shape[0]), int(shape[1])
        self.offset = self.fh.tell()
        self.row_bytes = self.d * 4
        size = os.fstat(self.fh.fileno()).st_size
        if size != self.offset + self.n * self.row_bytes:
            self.fh.close()
            raise IndexIntegrityError(f"{self.path}: size {size} does not match its header {shape}")

    def _read(self, first: int, count: int, out: np.ndarray) -> None:
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, want, done = self.offset + first * self.row_bytes, count * self.row_bytes, 0
        while done < want:
            got = os.preadv(self.fh.fileno(), [view[done:want]], pos + done)
            if got <= 0:
                raise IndexIntegrityError(f"{self.path}: short read")
            done += got

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (any order); contiguous runs are read with one call each."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.d), dtype=np.float32)
        if not len(idx):
            return out
        order = np.argsort(idx, kind="stable")
        s_idx = idx[order]
        if s_idx[0] < 0 or s_idx[-1] >= self.n:
            raise IndexError(f"row index out of range 0..{self.n - 1}")
        buf = np.empty_like(out)
        breaks = np.flatnonzero(np.diff(s_idx) != 1) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(s_idx)], strict=True):
            self._read(int(s_idx[a]), int(b - a), buf[a:b])
        out[order] = buf
        return out

    def batches(self, size: int):
        buf = np.empty((min(size, max(self.n, 1)), self.d), dtype=np.float32)
        for s in range(0, self.n, size):
            m = min(size, self.n - s)
            self._read(s, m, buf[:m])
            yield buf[:m]

    def close(self) -> None:
        self.fh.close()


def _new_faiss_index(n: int, d: int, config: IndexConfig) -> tuple[Any, str, dict]:
    faiss = _faiss()
    if n <= config.exact_max:
        return faiss.IndexFlatIP(d), "flat_ip", {"exact_max": config.exact_max}
    metric = faiss.METRIC_INNER_PRODUCT
    sq_types = {"sq8": faiss.ScalarQuantizer.QT_8bit, "fp16": faiss.ScalarQuantizer.QT_fp16}
    if config.approximate == "hnsw":
        if config.hnsw_storage == "flat":
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, metric)
        else:
            index = faiss.IndexHNSWSQ(d, sq_types[config.hnsw_storage], config.hnsw_m, metric)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
        params = {
            "M": config.hnsw_m,
            "efConstruction": config.hnsw_ef_construction,
            "efSearch": config.hnsw_ef_search,
            "storage": config.hnsw_storage,
        }
        return index, f"hnsw_{config.hnsw_storage}_ip", params
    if config.approximate != "ivf":
        raise ValueError(f"IndexConfig.approximate must be 'hnsw' or 'ivf', not {config.approximate!r}")
    nlist = config.ivf_nlist or default_nlist(n)
    nprobe = config.ivf_nprobe or default_nprobe(nlist)
    storage = resolve_ivf_storage(n, config)
    quantizer = faiss.IndexFlatIP(d)
    if storage == "flat":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
    elif storage in sq_types:
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, sq_types[storage], metric)
    else:
        raise ValueError(f"IndexConfig.ivf_storage must be auto, flat, fp16 or sq8, not {storage!r}")
    index.nprobe = nprobe
    params = {
        "nlist": nlist,
        "nprobe": nprobe,
        "storage": storage,
        "nprobe_rule": None if config.ivf_nprobe else NPROBE_RULE,
    }
    return index, f"ivf_{storage}_ip", params


def build_faiss_index(source: Any, config: IndexConfig | None = None) -> tuple[Any, str, dict]:
    """Build a Faiss index from a row source (``take(idx)``, ``batches(size)``), adding in batches.

    Training (IVF, SQ) uses a random sample of at most ``max(ivf_train_max, 39 * nlist)`` rows;
    the rows are then added ``config.build_batch`` at a time, so the full float32 matrix need
    never be in memory when the source is the embeddings file."""
    config = config or IndexConfig()
    n, d = source.n, source.d
    index, index_type, params = _new_faiss_index(n, d, config)
    if not index.is_trained:
        nlist = int(params.get("nlist", 0))
        train_n = min(n, max(config.ivf_train_max, 39 * nlist))
        rng = np.random.default_rng(config.seed)
        idx = np.arange(n) if train_n >= n else np.sort(rng.choice(n, train_n, replace=False))
        sample = source.take(idx)
        index.train(sample)
        del sample
        if "nlist" in params:
            params["train_size"] = int(train_n)
    for batch in source.batches(max(1, config.build_batch)):
        index.add(batch)
    return index, index_type, params


def make_faiss_index(vectors: np.ndarray, config: IndexConfig | None = None) -> tuple[Any, str, dict]:
    """Build and fill a Faiss index for in-memory unit vectors; returns (index, type name, parameters)."""
    x = np.asarray(vectors, dtype=np.float32)
    return build_faiss_index(_ArrayRows(x), config)


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


def _commit(tmp: str, path: Path) -> str:
    """fsync ``tmp``, rename it onto ``path``; returns the file's sha256."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    return digest


def _tmp_beside(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def _atomic(path: Path, writer) -> str:
    """Write through ``writer(tmp_path)`` then rename into place; returns the file's sha256."""
    tmp = _tmp_beside(path)
    try:
        writer(tmp)
        return _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_faiss(index: Any, path: Path) -> str:
    faiss = _faiss()
    return _atomic(path, lambda p: faiss.write_index(index, p))


def _npy_header(fh, n: int, d: int) -> None:
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})


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
) -> tuple[_NpyRows | None, list[str] | None, str | None]:
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
        rows = _NpyRows(path)
        hashes = meta["content_hashes"]
        if (rows.n, rows.d) != (int(meta["count"]), dim) or len(hashes) != rows.n:
            rows.close()
            return None, None, "previous index: content hashes and embeddings disagree: not reused"
    except (FileNotFoundError, IndexIntegrityError, KeyError, ValueError, OSError) as exc:
        if rows is not None:
            rows.close()
        return None, None, f"previous index not reused: {exc}"
    return rows, hashes, None


def _row_plan(
    chunks: pl.DataFrame, previous_hashes: list[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    return prev_row, plan["first"].to_numpy(), plan["multi"].to_numpy()


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
    missing = [c for c in REQUIRED_CHUNK_COLUMNS if c not in chunks.columns]
    if missing:
        raise ValueError(f"chunks table lacks columns {missing}")
    if chunks["chunk_id"].n_unique() != chunks.height:
        raise ValueError("chunk_id values must be unique")
    config = config or IndexConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name, dim = str(embedder.name), int(embedder.dim)
    n = chunks.height
    step = max(1, int(config.build_batch))

    prev, prev_hashes, note = _previous_embeddings(previous_dir, name, dim)
    emb_tmp = _tmp_beside(out / EMBEDDINGS_FILE)
    source = None
    try:
        prev_row, first, multi = _row_plan(chunks, prev_hashes)
        reused = int((prev_row >= 0).sum())
        text_col = chunks["text"]
        shared: dict[int, np.ndarray] = {}  # first row -> vector, for hashes repeated in this table
        t_embed = time.perf_counter()
        encode_s = 0.0
        with open(emb_tmp, "wb") as fh:
            _npy_header(fh, n, dim)
            for s in range(0, n, step):
                m = min(step, n - s)
                block = np.empty((m, dim), dtype=np.float32)
                pr = prev_row[s : s + m]
                hit = np.flatnonzero(pr >= 0)
                if len(hit):
                    block[hit] = prev.take(pr[hit])
                rows = np.arange(s, s + m)
                fresh = np.flatnonzero((pr < 0) & (first[s : s + m] == rows))
                if len(fresh):
                    te = time.perf_counter()
                    texts = text_col.slice(s, m).gather(fresh).to_list()
                    new = np.asarray(embedder.encode(texts), dtype=np.float32)
                    encode_s += time.perf_counter() - te
                    if new.shape != (len(fresh), dim):
                        raise ValueError(f"embedder returned {new.shape}, expected {(len(fresh), dim)}")
                    block[fresh] = new
                    for j in fresh[multi[s + fresh]]:
                        shared[s + int(j)] = block[j].copy()
                for j in np.flatnonzero((pr < 0) & (first[s : s + m] != rows)):
                    block[j] = shared[int(first[s + j])]
                fh.write(block.tobytes())
        if prev is not None:
            prev.close()
            prev = None
        del shared
        embedded = n - reused
        t_index = time.perf_counter()
        source = _NpyRows(emb_tmp)
        index, index_type, params = build_faiss_index(source, config)
        source.close()
        source = None
        t_write = time.perf_counter()

        files = {INDEX_FILE: _write_faiss(index, out / INDEX_FILE)}
        del index  # free it before the docstore is written
        files[EMBEDDINGS_FILE] = _commit(emb_tmp, out / EMBEDDINGS_FILE)
        files[DOCSTORE_FILE] = _atomic(
            out / DOCSTORE_FILE, lambda p: chunks.write_parquet(p, compression="zstd")
        )
    except BaseException:
        Path(emb_tmp).unlink(missing_ok=True)
        raise
    finally:
        for r in (prev, source):
            if r is not None:
                r.close()
    hashes = chunks["content_hash"].to_list()
    seconds = time.perf_counter() - t0
    meta = {
        "format_version": FORMAT_VERSION,
        "embedder": {"name": name, "dim": dim},
        "metric": "inner_product",
        "index_type": index_type,
        "params": params,
        "count": n,
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
        count=n,
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
