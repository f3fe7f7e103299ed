"""Retrieval benchmark: exact vs approximate Faiss indexes on real MiniLM embeddings (the
headline), synthetic sweeps at 200k, real-corpus retrieval quality, 1M-chunk RAM.

Headline (on by default; :mod:`retrieval_real`): side by side in one run on real MiniLM
embeddings of real text (``--real-n``, default 20,000 corpus sentences and generated variants
of them; 1,000 held-out texts + the 74 eval queries as queries): exact search (``IndexFlatIP``,
the fair baseline) vs the library's default approximate index (IVF; HNSW with ``--approx``) with
its build-time calibrated search depth, and the same index at the old fixed rule's depth:
recall@10 against exact, batched queries/s and the ratio to exact. Measured (``--threads 1
--repeats 5``): 20k vectors, recall@10 0.955 at 1.9x exact (nprobe 38; nprobe 8 gave 0.873);
55k (``--real-n 55000``), 0.972 at 2.9-3.0x (nprobe 26; nprobe 8 gave 0.933).

Synthetic part: N unit vectors (default 200,000 x 384) and Q queries, of three kinds:
``random`` (uniform, no neighbour structure: the hardest case), ``clustered`` (around
``--centres`` random centres) and ``real_anchored`` (around MiniLM embeddings of the default
corpus's sentences: synthetic points, *not* real embeddings; IVF found them far easier than the
real ones).

- build rate and batched query rate of ``IndexFlatIP`` (exact) and of the approximate index
  (IVF by default, HNSW with ``--approx hnsw``, both with ``--approx both``), sweeping nprobe /
  efSearch; the row flagged ``default`` is the library's own default (the calibrated depth);
  recall@10 of each against the exact result; resident-memory growth of each index.

``--million``: builds a 1M-chunk index (random unit vectors made batch by batch by a stand-in
embedder, a ~450-character docstore text per chunk) with ``build_index`` defaults in a child
process, then loads and queries it in another, and reports each child's peak RSS. Random
vectors have no neighbour structure, so calibration climbs to most IVF cells: its sample is
``--million-calibration-queries`` (default 200) to bound the build time.

Real corpus part (``--corpus``, on by default): ingest the default corpus, build the index with
the default embedder, recall@5 / MRR of dense, lexical and hybrid retrieval on
``medtrinity_assets_tests/data/retrieval_eval.jsonl``.

    python benchmarks/retrieval.py                 # full run (headline at 20k real, synthetic 200k)
    python benchmarks/retrieval.py --real-only     # the real-embedding headline only
    python benchmarks/retrieval.py --real-only --threads 1 --repeats 5 --real-n 55000
    python benchmarks/retrieval.py --quick         # 20k synthetic, 500 queries, 5k real
    python benchmarks/retrieval.py --million-only  # 1M-chunk peak RSS only
    python benchmarks/retrieval.py --n 50000 --approx both --no-corpus
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval_real import cache_dir, corpus_sentences, embed_cached, headline, recall_at  # noqa: E402

EVAL_PATH = REPO / "medtrinity_assets_tests" / "data" / "retrieval_eval.jsonl"
GIB = 1024**3


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def unit(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    step = 50_000
    for s in range(0, n, step):
        block = rng.standard_normal((min(step, n - s), d), dtype=np.float32)
        out[s : s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def clustered(n: int, d: int, seed: int, centres: int = 2000, spread: float = 1.0) -> np.ndarray:
    """Unit vectors scattered around shared random centres (cosine to the centre ~0.7).

    A stand-in for text embeddings, which are structured (topics), unlike uniform random
    vectors. Database and queries use the same centres (seed 0) with their own noise."""
    rng_c = np.random.default_rng(0)
    c = rng_c.standard_normal((centres, d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    step = 50_000
    for s in range(0, n, step):
        m = min(step, n - s)
        block = c[rng.integers(0, centres, m)] + spread * rng.standard_normal(
            (m, d), dtype=np.float32
        ) / np.sqrt(d)
        out[s : s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


_SENTENCE_CACHE: dict = {}


def real_sentence_vectors(args) -> np.ndarray:
    """MiniLM embeddings of the default corpus's sentences (the anchors of ``real_anchored``)."""
    if "v" not in _SENTENCE_CACHE:
        from medtrinity_assets.knowledge.embedder import SentenceTransformerEmbedder

        sents = corpus_sentences()
        xb, info = embed_cached(sents, SentenceTransformerEmbedder(), cache_dir(args.vector_cache))
        print(f"[real sentences] {len(sents)} sentences: {info}", flush=True)
        _SENTENCE_CACHE["v"] = xb
    return _SENTENCE_CACHE["v"]


def anchored(anchors: np.ndarray, n: int, seed: int, spread: float = 1.0) -> np.ndarray:
    """Like :func:`clustered`, but the centres are real MiniLM sentence embeddings (which are
    anisotropic and topic-clustered), so the cell structure IVF sees is that of real text."""
    rng = np.random.default_rng(seed)
    d = anchors.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        block = anchors[rng.integers(0, len(anchors), m)] + spread * rng.standard_normal(
            (m, d), dtype=np.float32
        ) / np.sqrt(d)
        out[s : s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


_MILLION_CHILD = r"""
import json, resource, sys, time
import numpy as np, polars as pl
sys.path.insert(0, {repo!r})
from medtrinity_assets.knowledge.index import IndexConfig, build_index, load_index

mode, out_dir, n, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
nlist, cal_q = int(sys.argv[5]) or None, int(sys.argv[6])

class RandomEmbedder:
    # random unit vectors, seeded by the first chunk number of each batch (no model, fast)
    name, dim = "random-unit", d
    def encode(self, texts):
        seed = int(texts[0].split(" ", 2)[1]) if texts else 0
        x = np.random.default_rng(seed).standard_normal((len(texts), self.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

def peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30

res = {{"mode": mode, "n": n, "peak_rss_before_gib": round(peak_gib(), 3)}}
t = time.perf_counter()
if mode == "build":
    filler = ("lorem ipsum dolor sit amet consectetur " * 12)[:440]
    chunks = pl.select(pl.int_range(n, dtype=pl.Int64).alias("i")).select(
        pl.format("c{{}}", "i").alias("chunk_id"),
        pl.format("chunk {{}} {{}}", "i", pl.lit(filler)).alias("text"),
        pl.format("h{{}}", "i").alias("content_hash"),
    )
    res["docstore_mib"] = round(chunks.estimated_size() / 2**20, 1)
    res["peak_rss_after_docstore_gib"] = round(peak_gib(), 3)
    cfg = IndexConfig(ivf_nlist=nlist, calibration_queries=cal_q)
    built = build_index(chunks, RandomEmbedder(), out_dir, config=cfg)
    res.update(index_type=built.index_type, params=built.params, timings=built.timings,
               build_rate_per_s=round(n / built.seconds))
else:
    ki = load_index(out_dir)
    res["load_s"] = round(time.perf_counter() - t, 2)
    q = RandomEmbedder().encode(["q 7 x"] * 1000)
    t = time.perf_counter()
    ki.search(q, 10)
    res.update(index_type=ki.index_type, query_qps=round(1000 / (time.perf_counter() - t), 1))
res["seconds"] = round(time.perf_counter() - t, 1)
res["peak_rss_gib"] = round(peak_gib(), 3)
print("RESULT " + json.dumps(res), flush=True)
"""


def million(args) -> dict:
    """Build, then load + query, a ``--million-n``-chunk index in child processes; report each
    child's peak RSS (its own ru_maxrss, and the parent's RUSAGE_CHILDREN high-water mark)."""
    import resource
    import subprocess

    code = _MILLION_CHILD.format(repo=str(REPO))
    out: dict = {"n": args.million_n, "limit_gib": 4.0}
    with tempfile.TemporaryDirectory(dir=args.million_dir) as tmp:
        for mode in ("build", "query"):
            cmd = [sys.executable, "-c", code, mode, tmp, str(args.million_n), str(args.dim)]
            cmd += [str(args.million_nlist or 0), str(args.million_calibration_queries)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise RuntimeError(f"{mode} child failed ({proc.returncode}): {proc.stderr[-2000:]}")
            res = json.loads(line[len("RESULT ") :])
            res["wall_s"] = round(time.perf_counter() - t, 1)
            res["rusage_children_maxrss_gib"] = round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB, 3
            )
            out[mode] = res
            print(f"[million:{mode}] {res}", flush=True)
        out["files_mib"] = {
            f.name: round(f.stat().st_size / 2**20, 1) for f in Path(tmp).iterdir() if f.is_file()
        }
    peak = max(out["build"]["peak_rss_gib"], out["query"]["peak_rss_gib"])
    out["peak_rss_gib"] = peak
    out["under_limit"] = peak < 4.0
    return out


def timed_search(index, q: np.ndarray, k: int, repeats: int = 1) -> tuple[np.ndarray, float]:
    best = float("inf")
    ids = None
    for _ in range(repeats):
        t = time.perf_counter()
        _, ids = index.search(q, k)
        best = min(best, time.perf_counter() - t)
    return ids, best


def memory_model(n: int, d: int, hnsw_m: int, pq_m: int, nlist: int) -> dict[str, float]:
    """Bytes per index layout for n vectors (vectors + graph links / lists + ids), in GiB."""
    links = n * hnsw_m * 2 * 4 * 1.05  # level-0 has 2M int32 neighbours; upper levels ~5 %
    return {
        "flat_f32": n * d * 4 / GIB,
        "hnsw_flat": (n * d * 4 + links) / GIB,
        "hnsw_fp16": (n * d * 2 + links) / GIB,
        "hnsw_sq8": (n * d * 1 + links) / GIB,
        "ivf_flat": (n * d * 4 + n * 8 + nlist * d * 4) / GIB,
        "ivf_pq": (n * (pq_m + 8) + nlist * d * 4) / GIB,
    }


def synthetic(args) -> dict:
    import faiss

    from medtrinity_assets.knowledge.faiss_index import IndexConfig, make_faiss_index

    n, d, nq, k = args.n, args.dim, args.queries, 10
    print(
        f"[synthetic:{args.data}] n={n} dim={d} queries={nq} threads={faiss.omp_get_max_threads()}",
        flush=True,
    )
    if args.data == "random":
        xb, xq = unit(n, d, 1), unit(nq, d, 2)
    elif args.data == "clustered":
        xb, xq = clustered(n, d, 1, centres=args.centres), clustered(nq, d, 2, centres=args.centres)
    else:  # real_anchored
        anchors = real_sentence_vectors(args)
        xb, xq = anchored(anchors, n, 1), anchored(anchors, nq, 2)
    out: dict = {"data": args.data, "n": n, "dim": d, "queries": nq, "threads": faiss.omp_get_max_threads()}

    m0 = rss()
    t = time.perf_counter()
    flat, _, _ = make_faiss_index(xb, IndexConfig(exact_max=n))
    build = time.perf_counter() - t
    flat_mem = rss() - m0
    gt, q_s = timed_search(flat, xq, k, repeats=2)
    exact_qps = nq / q_s
    out["exact"] = {
        "build_s": round(build, 2),
        "build_rate_per_s": round(n / build),
        "qps": round(exact_qps, 1),
        "rss_growth_gib": round(flat_mem / GIB, 3),
    }
    print(f"[exact] build {build:.2f}s  qps {exact_qps:.0f}  rss +{flat_mem / GIB:.2f} GiB", flush=True)

    kinds = ["hnsw", "ivf"] if args.approx == "both" else [args.approx]
    out["approximate"] = []
    for kind in kinds:
        cfg = IndexConfig(
            exact_max=0,
            approximate=kind,
            ivf_storage=args.ivf_storage,
            hnsw_m=args.hnsw_m,
            hnsw_ef_construction=args.ef_construction,
            hnsw_storage=args.hnsw_storage,
            ivf_nlist=args.nlist,
            ivf_train_max=args.train_max,
        )
        gc.collect()
        m0 = rss()
        t = time.perf_counter()
        index, itype, params = make_faiss_index(xb, cfg)
        build = time.perf_counter() - t
        mem = rss() - m0
        print(
            f"[{itype}] build {build:.1f}s ({n / build:.0f}/s) rss +{mem / GIB:.2f} GiB params {params}",
            flush=True,
        )
        sweep = []
        values = list(args.ef_search if kind == "hnsw" else args.nprobe)
        default_value = params.get("efSearch" if kind == "hnsw" else "nprobe")
        if default_value not in values:
            values.append(default_value)
        for v in values:
            if kind == "hnsw":
                index.hnsw.efSearch = v
            else:
                index.nprobe = v
            ids, q_s = timed_search(index, xq, k, repeats=2)
            r = recall_at(ids, gt, k)
            qps = nq / q_s
            row = {
                "param": "efSearch" if kind == "hnsw" else "nprobe",
                "value": v,
                "recall@10": round(r, 4),
                "qps": round(qps, 1),
                "speedup_vs_exact": round(qps / exact_qps, 2),
                "default": v == default_value,
            }
            sweep.append(row)
            print(f"   {row}", flush=True)
        ok = [s for s in sweep if s["recall@10"] >= 0.95]
        best = max(ok, key=lambda s: s["qps"]) if ok else None
        out["approximate"].append(
            {
                "default_params": next(s for s in sweep if s["default"]),
                "index_type": itype,
                "params": params,
                "build_s": round(build, 1),
                "build_rate_per_s": round(n / build),
                "rss_growth_gib": round(mem / GIB, 3),
                "sweep": sweep,
                "fastest_at_recall_0.95": best,
                "bytes_per_vector_measured": round(mem / n, 1) if mem > 0 else None,
            }
        )
        del index
        gc.collect()

    pq_m = 48
    nlist_1m = int(4 * 1_000_000**0.5)
    out["memory_at_1m_gib"] = {
        k: round(v, 2) for k, v in memory_model(1_000_000, d, args.hnsw_m, pq_m, nlist_1m).items()
    }
    out["memory_note"] = (
        "index memory only (model); builds stream the float32 matrix through embeddings.npy in "
        "batches, so a build holds the index + docstore + a few batches; --million measures it. "
        f"The default above 500k vectors is IVF{nlist_1m}-SQ8 (~0.37 GiB at 1M)."
    )
    return out


def real_corpus(args) -> dict:
    from medtrinity_assets.knowledge.corpus import ingest_corpora
    from medtrinity_assets.knowledge.embedder import SentenceTransformerEmbedder
    from medtrinity_assets.knowledge.faiss_index import IndexConfig, make_faiss_index
    from medtrinity_assets.knowledge.index import build_index, load_index
    from medtrinity_assets.knowledge.retrieval import HybridRetriever, evaluate_retrieval

    out: dict = {}
    t = time.perf_counter()
    res = ingest_corpora(list(args.corpus_path), include_default=not args.no_default)
    out["ingest"] = {"seconds": round(time.perf_counter() - t, 2), **res.counts, "chunker": res.chunker}
    print(f"[corpus] {out['ingest']}", flush=True)
    if res.chunks.height == 0:
        out["note"] = "default corpus is empty or absent"
        return out
    emb = SentenceTransformerEmbedder()
    with tempfile.TemporaryDirectory() as tmp:
        built = build_index(res.chunks, emb, tmp)
        out["build"] = {
            "seconds": round(built.seconds, 2),
            "chunks_per_s": round(built.count / built.seconds, 1),
            "index_type": built.index_type,
            **built.timings,
        }
        again = build_index(res.chunks, emb, tmp, previous_dir=tmp)
        out["incremental_rebuild"] = {
            "reused": again.reused,
            "embedded": again.embedded,
            "seconds": round(again.seconds, 2),
        }
        ki = load_index(tmp)
        retriever = HybridRetriever(ki, emb)
        vecs = ki.embeddings()
        eval_path = Path(args.eval)
        if eval_path.exists():
            rows = [json.loads(x) for x in eval_path.read_text(encoding="utf-8").splitlines() if x.strip()]
            t = time.perf_counter()
            out["eval"] = evaluate_retrieval(retriever, rows, k=5)
            out["eval_seconds_all_modes"] = round(time.perf_counter() - t, 2)
            print(f"[eval] {json.dumps(out['eval'])}", flush=True)
            queries = emb.encode([r["query"] for r in rows])
        else:
            out["eval"] = "retrieval_eval.jsonl not present"
            queries = vecs[:: max(1, len(vecs) // 100)] + 0.0
        # approximate vs exact on the real embeddings (chunk texts / eval queries)
        exact, _, _ = make_faiss_index(vecs, IndexConfig(exact_max=len(vecs)))
        kk = min(10, len(vecs))
        _, gt = exact.search(queries, kk)
        out["real_approx_vs_exact"] = {}
        for kind in ("ivf", "hnsw"):
            approx, itype, params = make_faiss_index(vecs, IndexConfig(exact_max=0, approximate=kind))
            _, ap = approx.search(queries, kk)
            out["real_approx_vs_exact"][itype] = {
                "recall@10": round(recall_at(ap, gt, kk), 4),
                "params": params,
                "queries": len(queries),
            }
        print(f"[real approximate vs exact] {out['real_approx_vs_exact']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="synthetic vectors")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="20k vectors, 500 queries")
    p.add_argument(
        "--data",
        choices=["random", "clustered", "real_anchored"],
        nargs="+",
        default=["random", "clustered", "real_anchored"],
        help="uniform random unit vectors (hardest case), clustered ones (random centres), and/or "
        "real_anchored (centres = MiniLM embeddings of the corpus sentences)",
    )
    p.add_argument("--centres", type=int, default=2000, help="clusters of --data clustered")
    p.add_argument("--ivf-storage", choices=["auto", "flat", "fp16", "sq8"], default="auto")
    p.add_argument("--real-n", type=int, default=20_000, help="real MiniLM vectors in the headline's database")
    p.add_argument("--real-held", type=int, default=1000, help="held-out texts used as headline queries")
    p.add_argument("--repeats", type=int, default=3, help="timed searches per headline row (best kept)")
    p.add_argument("--threads", type=int, default=0, help="Faiss threads for the headline (0: Faiss's default)")
    p.add_argument("--vector-cache", default=None, help="embedding cache folder (default: temp dir; 'off')")
    p.add_argument("--no-real", "--no-real-sentences", dest="no_real", action="store_true",
                   help="skip the real-embedding headline")
    p.add_argument("--real-only", action="store_true", help="only the real-embedding headline")
    p.add_argument("--million", action="store_true", help="measure peak RSS of a 1M-chunk build + query")
    p.add_argument("--million-only", action="store_true", help="only the --million measurement")
    p.add_argument("--million-n", type=int, default=1_000_000)
    p.add_argument("--million-nlist", type=int, default=None, help="default: 4*sqrt(n)")
    p.add_argument("--million-dir", default=None, help="where the 1M index is written (temp dir)")
    p.add_argument("--million-calibration-queries", type=int, default=200)
    p.add_argument("--approx", choices=["hnsw", "ivf", "both"], default="ivf")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=128)
    p.add_argument("--hnsw-storage", choices=["flat", "fp16", "sq8"], default="flat")
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--train-max", type=int, default=100_000)
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--corpus-path", nargs="*", default=[], help="extra corpus folders/files/URLs")
    p.add_argument("--no-default", action="store_true", help="leave out the embedded default corpus")
    p.add_argument("--eval", default=str(EVAL_PATH), help="JSONL of {query, relevant: [doc ids]}")
    p.add_argument("--no-corpus", action="store_true")
    p.add_argument("--json", type=str, default=None, help="write the figures to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.real_n = 20_000, 500, 5_000
    report: dict = {}
    if args.million_only:
        args.no_synthetic = args.no_corpus = args.no_real = True
        args.million = True
    if args.real_only:
        args.no_synthetic = args.no_corpus = True
    if not args.no_real:
        report["headline_real_embeddings"] = headline(args)
    if not args.no_synthetic:
        data = list(args.data)
        for kind in data:
            args.data = kind
            report[f"synthetic_{kind}"] = synthetic(args)
    if not args.no_corpus:
        report["real"] = real_corpus(args)
    if args.million:
        report["million"] = million(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
