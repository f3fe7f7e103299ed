"""Build-time calibration of an approximate index's search depth (IVF ``nprobe``, HNSW ``efSearch``).

A fixed probe rule measured on synthetic vectors does not carry over to real text embeddings:
MiniLM sentence vectors are spread over many weakly separated topics, so a query's ten nearest
neighbours fall in many more IVF cells than in clustered synthetic data. The default rule's
``nprobe`` (8) gave recall@10 0.84 on the MiniLM embeddings of the default corpus's sentences.

So after the index is trained and filled, :func:`calibrate_search` measures recall on the
index's own data and raises the search depth from the rule's starting value until recall@k
against exact search reaches the target (``IndexConfig.recall_target``, default 0.95):

- queries: a seeded sample of the stored vectors (``IndexConfig.calibration_queries``, default
  1,000), each searched *leave-one-out*: its own row is removed from both the exact and the
  approximate answer, so a query is a vector the index has not seen at that position, as a
  held-out sentence would be;
- ground truth: exact inner product over every stored row, streamed batch by batch from the
  build's row source (the float32 matrix is never held whole);
- a returned row counts as a hit when its exact score reaches the k-th exact score (ties, such as
  repeated texts, count as hits whichever copy is returned);
- criterion: the one-sided 95 % lower confidence bound of the mean recall must reach the
  target plus ``IndexConfig.calibration_margin`` (0.005), so sampling noise and the difference
  between stored vectors and unseen queries do not take the result below the target;
- search: the depth doubles from the starting value until the criterion is met (or the depth
  reaches every IVF cell / ``HNSW_EF_CAP``), then a bisection narrows it to within ~6 % of the
  smallest depth that meets it (recall is non-decreasing in ``nprobe``).

Leave-one-out against unseen queries, on MiniLM embeddings of the default corpus's sentences
and sentence fragments (benchmarks/retrieval.py headline; test_knowledge_index_recall.py):
leave-one-out 0.962 / 1,000 held-out texts 0.959 / 74 eval queries 0.980 at 5k vectors,
0.961 / 0.953 / 0.991 at 20k, 0.962 / 0.972 / 0.980 at 55k; 0.962 / 0.966 (249 held-out
sentences) / 0.973 on 1,739 corpus sentences (nprobe 26 of 167; the rule's 8 gave 0.844).
Calibration took 0.2-2.5 s of a 0.3-9 s build on 2 shared cores.

The chosen depth and the measurement go into the index parameters (``params["nprobe"]`` or
``params["efSearch"]`` and ``params["calibration"]``), hence into ``index.json``, and
:func:`medtrinity_assets.knowledge.index.load_index` applies them when the index is loaded.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

CALIBRATION_METHOD = (
    "leave-one-out: a seeded sample of the stored vectors as queries, each one's own row left out; "
    "recall@k against exact inner product over all rows, a row scoring at least the k-th exact "
    "score counts as a hit"
)
HNSW_EF_CAP = 4096  # deepest efSearch tried
SCORE_TOLERANCE = 1e-5  # float32 inner products of the same pair from two code paths
Z_95 = 1.645  # one-sided 95 % normal quantile


def _drop_self(
    ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` results of each row once the query's own row is removed (the last one
    when its own row is not among them)."""
    order = np.argsort(ids == self_ids[:, None], axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1)[:, :k], np.take_along_axis(scores, order, 1)[:, :k]


def exact_kth_scores(
    source: Any, queries: np.ndarray, self_ids: np.ndarray, k: int, batch: int
) -> np.ndarray:
    """Per query, the k-th best exact inner product over all rows of ``source`` but its own.

    Streams the rows ``batch`` at a time; ``faiss.knn`` keeps only the best ``k + 1`` of each
    batch, so the extra memory is one batch, not queries x batch scores."""
    import faiss

    m, keep = len(queries), k + 1
    best_s = np.full((m, keep), -np.inf, dtype=np.float32)
    best_i = np.full((m, keep), -1, dtype=np.int64)
    offset = 0
    for rows in source.batches(batch):
        scores, ids = faiss.knn(queries, rows, min(keep, len(rows)), metric=faiss.METRIC_INNER_PRODUCT)
        all_s = np.concatenate([best_s, scores], axis=1)
        all_i = np.concatenate([best_i, np.where(ids >= 0, ids + offset, -1)], axis=1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :keep]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
        offset += len(rows)
    _, kth = _drop_self(best_i, best_s, self_ids, k)
    return kth[:, k - 1]


def leave_one_out_recall(
    index: Any, source: Any, queries: np.ndarray, self_ids: np.ndarray, kth: np.ndarray, k: int
) -> np.ndarray:
    """Per query, recall@k of ``index`` for the sampled stored vectors, their own rows left out."""
    scores, ids = index.search(queries, k + 1)
    ids, _ = _drop_self(ids, scores, self_ids, k)
    valid = ids >= 0
    rows = source.take(np.where(valid, ids, 0).reshape(-1)).reshape(len(ids), k, -1)
    true = np.einsum("mkd,md->mk", rows, queries)
    hits = valid & (true >= kth[:, None] - SCORE_TOLERANCE)
    return hits.sum(axis=1) / k


def lower_bound(per_query: np.ndarray) -> float:
    """One-sided 95 % lower confidence bound of the mean recall (normal approximation)."""
    if len(per_query) < 2:
        return float(per_query.mean())
    return float(per_query.mean() - Z_95 * per_query.std(ddof=1) / np.sqrt(len(per_query)))


def smallest_passing(
    measure: Callable[[int], float], start: int, cap: int, target: float
) -> tuple[int, dict]:
    """The smallest depth in ``[start, cap]`` whose measured recall reaches ``target`` (doubling,
    then bisection down to ~6 % of it; ``cap`` when none does), and every depth measured."""
    tried: dict[int, float] = {}

    def at(v: int) -> float:
        if v not in tried:
            tried[v] = measure(v)
        return tried[v]

    failed, v = None, max(1, min(start, cap))
    while at(v) < target and v < cap:
        failed, v = v, min(cap, 2 * v)
    if at(v) >= target and failed is not None:
        while v - failed > max(1, v // 16):  # within ~6 % of the smallest passing depth
            mid = (v + failed) // 2
            if at(mid) >= target:
                v = mid
            else:
                failed = mid
    return v, tried


def _depth_knob(index: Any, index_type: str, n: int, params: dict) -> tuple[str, Callable[[int], None], int]:
    """(parameter name, setter, deepest value) of the index's search depth."""
    if index_type.startswith("ivf"):
        return "nprobe", lambda v: setattr(index, "nprobe", int(v)), int(params["nlist"])

    def set_ef(v: int) -> None:
        index.hnsw.efSearch = int(v)

    return "efSearch", set_ef, max(int(params["efSearch"]), min(n, HNSW_EF_CAP))


def calibrate_search(
    index: Any, index_type: str, params: dict, source: Any, config: Any, tune: bool = True
) -> dict | None:
    """Raise the approximate index's search depth until leave-one-out recall@k reaches
    ``config.recall_target``; set it on ``index`` and in ``params``, and return the record.

    With ``tune=False`` (a depth the caller fixed) the depth is only measured. Returns None
    (nothing measured) for exact indexes, when ``recall_target`` is None, or with fewer than
    ``k + 1`` rows."""
    target = config.recall_target
    n = int(source.n)
    k = min(int(config.calibration_k), n - 1)
    if target is None or index_type == "flat_ip" or k < 1:
        return None
    margin = float(config.calibration_margin)
    bar = float(target) + margin
    t0 = time.perf_counter()
    name, set_depth, cap = _depth_knob(index, index_type, n, params)
    start = int(params[name])
    m = max(1, min(int(config.calibration_queries), n))
    rng = np.random.default_rng(config.seed + 1)
    self_ids = np.sort(rng.choice(n, m, replace=False)).astype(np.int64)
    queries = source.take(self_ids)
    kth = exact_kth_scores(source, queries, self_ids, k, max(1, int(config.build_batch)))

    means: dict[int, float] = {}

    def measure(v: int) -> float:
        set_depth(v)
        per_query = leave_one_out_recall(index, source, queries, self_ids, kth, k)
        means[v] = float(per_query.mean())
        return lower_bound(per_query)

    if tune:
        chosen, tried = smallest_passing(measure, start, cap, bar)
    else:
        chosen, tried = start, {start: measure(start)}
    set_depth(chosen)
    params[name] = int(chosen)
    record = {
        "param": name,
        "target": float(target),
        "margin": margin,
        "k": k,
        "recall": round(means[chosen], 4),
        "recall_lower_bound": round(tried[chosen], 4),
        "met": tried[chosen] >= bar,
        "tuned": tune,
        "start": start,
        "chosen": int(chosen),
        "queries": m,
        "trials": [[int(v), round(means[v], 4), round(r, 4)] for v, r in sorted(tried.items())],
        "seconds": round(time.perf_counter() - t0, 3),
        "method": CALIBRATION_METHOD,
    }
    if not record["met"]:
        advice = (
            "the deepest tried: these vectors have little neighbour structure for this index, "
            "consider exact search (a larger exact_max)"
            if tune
            else "as configured: raise it, or leave it unset to calibrate it"
        )
        warnings.warn(
            f"{index_type}: recall@{k} {means[chosen]:.3f} (lower bound {tried[chosen]:.3f}) < "
            f"target {target} + margin {margin} at {name}={chosen}, {advice}",
            RuntimeWarning,
            stacklevel=3,
        )
    return record
