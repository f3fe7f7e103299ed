"""Choosing, building and tuning the Faiss index over chunk embeddings.

Index choice: exact inner product (``IndexFlatIP``) up to ``IndexConfig.exact_max`` vectors
(default 50,000); above that IVF (default) or HNSW. Vectors are L2-normalised, so inner
product is cosine similarity.

IVF: ``nlist = 4 * sqrt(n)`` (1,789 at 200k, 4,000 at 1M). The search depth is not a fixed
rule: ``NPROBE_RULE`` (``nprobe = max(8, ceil(nlist / 256))``) is only the starting value, and
the build raises nprobe until leave-one-out recall@10 against exact search, measured on the
index's own vectors, reaches ``recall_target`` (0.95; its 95 % lower bound must reach 0.955):
:mod:`medtrinity_assets.knowledge.calibration`. The chosen nprobe and the measured recall are
in ``params`` / ``index.json`` and applied by ``load_index``. HNSW's efSearch is calibrated the
same way from ``HNSW_EF_SEARCH_START``. A depth set in the config is kept and only measured.

Why: the rule was tuned on synthetic vectors (points scattered around MiniLM sentence
embeddings, "real-anchored": nprobe 8 gave recall@10 1.000 / 16.5x exact at 200k), which are
far easier for IVF than real text embeddings. On real MiniLM embeddings of the default corpus's
sentences and sentence fragments (benchmarks/retrieval.py headline: 1,000 held-out texts + the
74 eval queries, exact ``IndexFlatIP`` as the baseline, 1 Faiss thread, stable to 2 % between
runs), nprobe 8 gave recall@10 0.84 (1,688 sentences, the earlier benchmark), 0.83 (5k), 0.87
(20k), 0.93 (55k). Calibrated: 20k nprobe 38 (of 566 lists) 0.955 (held-out texts 0.953, eval
queries 0.991) at 1.9x exact; 55k nprobe 26 (of 938) 0.972 at 2.9-3.0x exact (2 shared threads:
1.8-4.6x and 2.5-8.1x, the exact rate swinging 4x with the machine's load). nlist is not too
large for this data: with nprobe calibrated, 2, 4 and 8 * sqrt(n) lists ran at 1.1x, 1.6x and
2.5x exact at 20k, 1.5x, 3.3x and 7.7x at 55k (1 thread). More lists were faster, but at 1M
training grows with nlist squared (39 samples per list), so the rule stays until measured
there; set ``ivf_nlist`` to use more. Uniform random vectors (no neighbour structure) need
most of the cells (nprobe 454 of 566 at 20k): calibration reaches the target, but exact search
is then as fast; use exact search for such data.

Storage: ``ivf_storage="auto"`` keeps float32 vectors (IVF-Flat) up to ``ivf_flat_max``
(500,000) and 8-bit scalar-quantised vectors (IVF-SQ8, 384 B/vector at 384d, 0.37 GiB at 1M)
above; SQ8 cost 1.5-2 points of recall@10 at a fixed nprobe on synthetic clusters (calibration
then picks a slightly deeper nprobe: 46 vs 44 on 10k real sentence vectors).
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

from medtrinity_assets.knowledge.calibration import calibrate_search

# Default IVF probe count (see the module docstring for the measurements behind it).
NPROBE_FRACTION = 1 / 256
NPROBE_MIN = 8
NPROBE_RULE = "nprobe = max(8, ceil(nlist / 256)), capped at nlist"
HNSW_EF_SEARCH_START = 16  # calibration raises it (128 was the fixed default before)


@dataclass
class IndexConfig:
    """How the Faiss index is chosen and tuned."""

    exact_max: int = 50_000
    approximate: Literal["hnsw", "ivf"] = "ivf"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 128
    hnsw_ef_search: int | None = None  # default: calibrated from HNSW_EF_SEARCH_START
    hnsw_storage: Literal["flat", "fp16", "sq8"] = "flat"
    ivf_nlist: int | None = None  # default: 4 * sqrt(n)
    ivf_nprobe: int | None = None  # default: calibrated, starting from NPROBE_RULE (default_nprobe)
    # how IVF stores vectors: float32 ("flat", 1,536 B/vector at 384d), "fp16" (768 B) or 8-bit
    # scalar quantised ("sq8", 384 B); "auto" = flat up to ivf_flat_max vectors, sq8 above.
    ivf_storage: Literal["auto", "flat", "fp16", "sq8"] = "auto"
    ivf_flat_max: int = 500_000
    ivf_train_max: int = 100_000
    build_batch: int = 16_384  # rows embedded / read / added per step of a build
    seed: int = 0
    # Search-depth calibration of IVF / HNSW (see medtrinity_assets.knowledge.calibration): the
    # smallest nprobe / efSearch whose leave-one-out recall@calibration_k against exact search
    # (its one-sided 95 % lower bound) reaches recall_target + calibration_margin on
    # calibration_queries stored vectors. A depth set above (ivf_nprobe, hnsw_ef_search) is
    # kept and only measured; recall_target None measures nothing.
    recall_target: float | None = 0.95
    calibration_margin: float = 0.005
    calibration_queries: int = 1000
    calibration_k: int = 10


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
    ef_search = config.hnsw_ef_search or HNSW_EF_SEARCH_START
    index.hnsw.efConstruction = config.hnsw_ef_construction
    index.hnsw.efSearch = ef_search
    params = {
        "M": config.hnsw_m,
        "efConstruction": config.hnsw_ef_construction,
        "efSearch": ef_search,
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
    never be in memory when the source is the embeddings file. An approximate index's search
    depth is then calibrated on its own rows (:func:`calibrate_search`): the chosen value and the
    measured recall are in the returned parameters (``params["calibration"]``)."""
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
    fixed = config.ivf_nprobe if index_type.startswith("ivf") else config.hnsw_ef_search
    record = calibrate_search(index, index_type, params, source, config, tune=not fixed)
    if record is not None:
        params["calibration"] = record
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
