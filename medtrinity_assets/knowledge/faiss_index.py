"""Choosing, building and tuning the Faiss index over chunk embeddings.

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
Builds stream (see :func:`build_faiss_index` and
:func:`medtrinity_assets.knowledge.index.build_index`): the float32 matrix is never held in
memory whole, so a 1M-chunk build peaks at the index + docstore + a few batches (``--million``
measures it).
HNSW stays available (``approximate="hnsw"``, ``hnsw_storage="sq8"``); it builds ~15x slower.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

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


def import_faiss() -> Any:
    """The ``faiss`` module, imported on first use (importing this package stays light)."""
    import faiss

    return faiss


def default_nlist(n: int) -> int:
    """IVF cell count: 4 * sqrt(n) (about 1,789 at 200k, 4,000 at 1M)."""
    return max(1, int(round(4 * math.sqrt(n))))


def default_nprobe(nlist: int) -> int:
    """IVF cells scanned per query: ``NPROBE_RULE``, measured at 200k (see module docstring)."""
    return min(nlist, max(NPROBE_MIN, int(math.ceil(nlist * NPROBE_FRACTION))))


def resolve_ivf_storage(n: int, config: IndexConfig) -> str:
    """The IVF vector storage for ``n`` vectors: ``config.ivf_storage``, with "auto" resolved."""
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

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for s in range(0, self.n, size):
            yield np.ascontiguousarray(self.x[s : s + size], dtype=np.float32)

    def close(self) -> None:
        pass


def _scalar_quantizer_types(faiss: Any) -> dict[str, Any]:
    return {"sq8": faiss.ScalarQuantizer.QT_8bit, "fp16": faiss.ScalarQuantizer.QT_fp16}


def _new_hnsw_index(d: int, config: IndexConfig) -> tuple[Any, str, dict]:
    """An empty HNSW index (flat, fp16 or sq8 storage) with its construction and search depth."""
    faiss = import_faiss()
    metric = faiss.METRIC_INNER_PRODUCT
    if config.hnsw_storage == "flat":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, metric)
    else:
        sq_type = _scalar_quantizer_types(faiss)[config.hnsw_storage]
        index = faiss.IndexHNSWSQ(d, sq_type, config.hnsw_m, metric)
    index.hnsw.efConstruction = config.hnsw_ef_construction
    index.hnsw.efSearch = config.hnsw_ef_search
    params = {
        "M": config.hnsw_m,
        "efConstruction": config.hnsw_ef_construction,
        "efSearch": config.hnsw_ef_search,
        "storage": config.hnsw_storage,
    }
    return index, f"hnsw_{config.hnsw_storage}_ip", params


def _new_ivf_index(n: int, d: int, config: IndexConfig) -> tuple[Any, str, dict]:
    """An untrained IVF index sized for ``n`` vectors (nlist, nprobe and storage resolved)."""
    faiss = import_faiss()
    metric = faiss.METRIC_INNER_PRODUCT
    sq_types = _scalar_quantizer_types(faiss)
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


def _new_faiss_index(n: int, d: int, config: IndexConfig) -> tuple[Any, str, dict]:
    """An empty index for ``n`` vectors of dimension ``d``: exact up to ``exact_max``, else HNSW or IVF."""
    if n <= config.exact_max:
        return import_faiss().IndexFlatIP(d), "flat_ip", {"exact_max": config.exact_max}
    if config.approximate == "hnsw":
        return _new_hnsw_index(d, config)
    if config.approximate != "ivf":
        raise ValueError(f"IndexConfig.approximate must be 'hnsw' or 'ivf', not {config.approximate!r}")
    return _new_ivf_index(n, d, config)


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
