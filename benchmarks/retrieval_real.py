"""The headline of benchmarks/retrieval.py: exact search vs the library's default approximate
index, side by side in one run, on real MiniLM embeddings of real text.

Database: ``--real-n`` (default 20,000; ``--quick`` 5,000; at most 55,185) texts embedded with
the default embedder (``SentenceTransformerEmbedder``, all-MiniLM-L6-v2, CPU). The default
corpus has only 1,988 titles and sentences, so the pool adds variants generated from the same
text: adjacent sentence pairs, "title: sentence", and word windows of 4-9 and 12 words
(``VARIANT_WINDOWS``) of every sentence; 56,185 distinct texts, shuffled with a fixed seed
(the 20k database: 18,254 windows, 672 sentences or titles, 591 titled, 483 pairs).
Overlapping windows of one sentence are near neighbours of each other, as overlapping chunks
of a chunked corpus are.
Queries: ``--real-held`` (default 1,000) texts of the pool held out of the database, and the 74
eval queries of ``retrieval_eval.jsonl`` (short ROI-style queries).

Rows, on the same queries: exact inner product (``IndexFlatIP``: the fair baseline and the
ground truth), the default approximate index with its build-time calibrated depth (what
``build_index`` writes and ``load_index`` searches with), and the same index at the fixed rule's
starting depth (``NPROBE_RULE``: the behaviour before calibration). recall@10 against exact,
batched queries/s (best of ``--repeats``, the rows interleaved so that load on the shared
machine hits every row alike) and the ratio to exact. On a shared machine the exact rate swings
with the load (up to 4x between runs on 2 threads); ``--threads 1`` gave ratios stable to 2 %.

Embedding ran at 150-350 texts/s on two shared CPU cores (about 1.5 min for the default 21k
texts, 2.5 min more for 55k), so vectors are kept in a cache folder keyed by sha256(model name,
text) (``--vector-cache``, default a per-user temp folder; ``off`` disables it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANT_WINDOWS = ((4, 2), (5, 2), (6, 2), (7, 2), (8, 2), (9, 3), (12, 3))  # (words, stride)
SHUFFLE_SEED = 7


def _corpus_rows() -> list[dict]:
    from medtrinity_assets.knowledge.corpus import DEFAULT_CORPUS_PATH

    lines = DEFAULT_CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _split(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.;:!?])\s+", text) if len(s.split()) >= 4]


def corpus_sentences() -> list[str]:
    """Sentences of the default corpus passages (titles included), deduplicated, >= 4 words."""
    seen: dict[str, None] = {}
    for row in _corpus_rows():
        seen.setdefault(row["title"].strip(), None)
        for sent in _split(row["text"]):
            seen.setdefault(sent, None)
    return list(seen)


def real_texts() -> dict[str, str]:
    """Every distinct text of the database pool -> its kind (sentence, pair, titled, winN)."""
    seen: dict[str, str] = dict.fromkeys(corpus_sentences(), "sentence")
    for row in _corpus_rows():
        title, sents = row["title"].strip(), _split(row["text"])
        for a, b in zip(sents, sents[1:], strict=False):
            seen.setdefault(f"{a} {b}", "pair")
        for sent in sents:
            seen.setdefault(f"{title}: {sent}", "titled")
            words = sent.split()
            for size, stride in VARIANT_WINDOWS:
                for i in range(0, max(1, len(words) - size + 1), stride):
                    seen.setdefault(" ".join(words[i : i + size]), f"win{size}")
    return seen


def cache_dir(where: str | None) -> Path | None:
    if where and where.lower() == "off":
        return None
    path = Path(where) if where else Path(tempfile.gettempdir()) / f"medtrinity-bench-vectors-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def embed_cached(texts: list[str], embedder, cache: Path | None) -> tuple[np.ndarray, dict]:
    """Embeddings of ``texts``; rows found in the cache (by sha256 of model name and text) are
    reused, the rest embedded and added. Returns (vectors, {embedded, reused, rate_per_s})."""
    keys = np.array([hashlib.sha256(f"{embedder.name}\n{t}".encode()).digest() for t in texts], dtype="S32")
    known_keys, known = np.zeros(0, dtype="S32"), np.zeros((0, embedder.dim), np.float32)
    if cache is not None and (cache / "keys.npy").exists() and (cache / "vectors.npy").exists():
        known_keys = np.load(cache / "keys.npy", allow_pickle=False)
        known = np.load(cache / "vectors.npy", allow_pickle=False)
        if known.shape != (len(known_keys), embedder.dim) or known.dtype != np.float32:
            known_keys, known = np.zeros(0, dtype="S32"), np.zeros((0, embedder.dim), np.float32)
    row = {bytes(k): i for i, k in enumerate(known_keys)}
    missing = [i for i, k in enumerate(keys) if bytes(k) not in row]
    t = time.perf_counter()
    new = embedder.encode([texts[i] for i in missing])
    seconds = time.perf_counter() - t
    out = np.empty((len(texts), embedder.dim), np.float32)
    hit = np.array([row.get(bytes(k), -1) for k in keys])
    out[hit >= 0] = known[hit[hit >= 0]]
    out[missing] = new
    if cache is not None and missing:
        for name, arr in (
            ("keys.npy", np.concatenate([known_keys, keys[missing]])),
            ("vectors.npy", np.vstack([known, new])),
        ):
            tmp = cache / f".{name}.tmp.npy"
            np.save(tmp, arr, allow_pickle=False)
            os.replace(tmp, cache / name)
    rate = round(len(missing) / seconds, 1) if missing and seconds > 0 else None
    return out, {"embedded": len(missing), "reused": len(texts) - len(missing), "rate_per_s": rate}


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    hits = sum(len(set(a[:k]) & set(e[:k])) for a, e in zip(approx, exact, strict=True))
    return hits / (k * len(exact))


def _interleaved_rates(rows: list[tuple], queries: np.ndarray, k: int, repeats: int) -> list[tuple]:
    """For each (name, index, set_depth or None): (ids, best seconds), the rows timed in turn."""
    best = [float("inf")] * len(rows)
    ids: list = [None] * len(rows)
    for _ in range(max(1, repeats)):
        for j, (_, index, set_depth) in enumerate(rows):
            if set_depth is not None:
                set_depth()
            t = time.perf_counter()
            _, ids[j] = index.search(queries, k)
            best[j] = min(best[j], time.perf_counter() - t)
    return list(zip(ids, best, strict=True))


def _load_vectors(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(database, held-out queries, eval queries, scale record)."""
    from medtrinity_assets.knowledge.embedder import SentenceTransformerEmbedder

    pool = real_texts()
    texts = list(pool)
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(texts))
    n_held = min(args.real_held, len(texts) // 5)
    n_db = min(args.real_n, len(texts) - n_held)
    chosen = [texts[i] for i in order[: n_held + n_db]]
    rows = [json.loads(x) for x in Path(args.eval).read_text(encoding="utf-8").splitlines() if x.strip()]
    emb = SentenceTransformerEmbedder()
    cache = cache_dir(args.vector_cache)
    vecs, info = embed_cached(chosen + [r["query"] for r in rows], emb, cache)
    kinds: dict[str, int] = {}
    for t in chosen[n_held:]:
        kinds[pool[t]] = kinds.get(pool[t], 0) + 1
    scale = {
        "database": n_db,
        "held_out_queries": n_held,
        "eval_queries": len(rows),
        "pool_texts": len(texts),
        "database_kinds": kinds,
        "embedder": emb.name,
        "embedding": {**info, "cache": str(cache) if cache else None},
    }
    print(f"[real] {json.dumps(scale)}", flush=True)
    return vecs[n_held : n_held + n_db], vecs[:n_held], vecs[n_held + n_db :], scale


def _row(name: str, ids: np.ndarray, seconds: float, gt: np.ndarray, n_eval: int, exact_s: float) -> dict:
    return {
        "index": name,
        "recall@10": round(recall_at(ids, gt, 10), 4),
        "recall@10_eval_queries": round(recall_at(ids[:n_eval], gt[:n_eval], 10), 4),
        "recall@10_held_out_texts": round(recall_at(ids[n_eval:], gt[n_eval:], 10), 4),
        "qps": round(len(ids) / seconds, 1),
        "speed_vs_exact": round(exact_s / seconds, 2),
    }


def _setter(index, index_type: str, name: str, value: int):
    from medtrinity_assets.knowledge.faiss_index import apply_search_params

    return lambda: apply_search_params(index, index_type, {name: value})


def _print_table(res: dict, n: int, n_eval: int, n_held: int, threads: int) -> None:
    cal = res["params"]["calibration"]
    print(
        f"[real headline] {n:,} real MiniLM vectors, {n_eval + n_held:,} queries "
        f"({n_eval} eval + {n_held} held-out texts), {threads} threads",
        flush=True,
    )
    print(f"   {'index':44s} {'recall@10 all / eval / held-out':>32s} {'q/s':>10s} {'vs exact':>9s}")
    for r in res["rows"]:
        rec = (
            f"{r['recall@10']:.3f} / {r['recall@10_eval_queries']:.3f} / {r['recall@10_held_out_texts']:.3f}"
        )
        print(f"   {r['index']:44s} {rec:>32s} {r['qps']:>10,.0f} {r['speed_vs_exact']:>8.2f}x")
    print(
        f"   build {res['build_s']:.2f}s (calibration {cal['seconds']:.2f}s: leave-one-out recall@10 "
        f"{cal['recall']:.3f}, lower bound {cal['recall_lower_bound']:.3f}, {cal['queries']} stored vectors)",
        flush=True,
    )


def headline(args) -> dict:
    """Exact vs the default approximate index (calibrated, and at the rule's start) on real embeddings."""
    import faiss

    from medtrinity_assets.knowledge.faiss_index import IndexConfig, apply_search_params, make_faiss_index

    xb, xq_held, xq_eval, scale = _load_vectors(args)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    queries = np.vstack([xq_eval, xq_held])
    out: dict = {"scale": scale, "threads": faiss.omp_get_max_threads(), "repeats": args.repeats}
    out["load_avg_1m_before"] = round(os.getloadavg()[0], 2)  # the machine is shared: context for q/s
    t = time.perf_counter()
    exact = faiss.IndexFlatIP(xb.shape[1])
    exact.add(xb)
    out["exact_build_s"] = round(time.perf_counter() - t, 3)
    kinds = ["hnsw", "ivf"] if args.approx == "both" else [args.approx]
    out["approximate"] = []
    for kind in kinds:
        t = time.perf_counter()
        index, itype, params = make_faiss_index(xb, IndexConfig(exact_max=0, approximate=kind))
        build_s = time.perf_counter() - t
        cal = params["calibration"]
        name = cal["param"]
        rows = [("exact IndexFlatIP", exact, None)]
        rows.append(
            (
                f"{itype} {name} {cal['chosen']} (calibrated)",
                index,
                _setter(index, itype, name, cal["chosen"]),
            )
        )
        if cal["start"] != cal["chosen"]:
            label = f"{itype} {name} {cal['start']} (fixed rule, before)"
            rows.append((label, index, _setter(index, itype, name, cal["start"])))
        timed = _interleaved_rates(rows, queries, 10, args.repeats)
        gt, exact_s = timed[0]
        table = [
            _row(r[0], ids, s, gt, len(xq_eval), exact_s) for r, (ids, s) in zip(rows, timed, strict=True)
        ]
        apply_search_params(index, itype, {name: cal["chosen"]})
        out["approximate"].append(
            {
                "index_type": itype,
                "params": params,
                "build_s": round(build_s, 2),
                "calibration_s": cal["seconds"],
                "rows": table,
            }
        )
        _print_table(out["approximate"][-1], len(xb), len(xq_eval), len(xq_held), out["threads"])
        del index
    return out
