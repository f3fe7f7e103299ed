"""Hybrid retrieval: dense (Faiss) + lexical (BM25 via ``bm25s``), fused by reciprocal rank.

The BM25 index is rebuilt from the docstore when a retriever is created (a few hundred ms per
ten thousand chunks), so it can never disagree with the verified Faiss index it sits beside.
Queries are processed in batches: one embedding call and one Faiss search for all of them.

Every hit also carries its exact dense cosine similarity to the query (``Hit.similarity``),
whatever the mode ranked it by: the fused reciprocal-rank score says only where a passage
stands among the others, the cosine says how close it is at all. ``min_similarity`` drops the
passages at or below a floor; :data:`DEFAULT_MIN_SIMILARITY` is the floor measured on the default
corpus with the default embedder (see :mod:`medtrinity_assets.knowledge.queries`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from medtrinity_assets.knowledge.index import KnowledgeIndex

Mode = Literal["hybrid", "dense", "lexical"]
MODES = ("hybrid", "dense", "lexical")
Order = Literal["rank", "similarity"]
ORDERS = ("rank", "similarity")

# Dense cosine similarity (all-MiniLM-L6-v2, default corpus) at or below which the pipeline's
# retrieval returns no passage; measured on 32 demo situations with concept queries
# (medtrinity_assets_tests/test_knowledge_fit.py); the numbers are in knowledge/queries.py.
DEFAULT_MIN_SIMILARITY = 0.42

_TOKEN = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    """a an and are as at be been being but by can could did do does for from had has have how
    if in into is it its it's of on or such than that the their them then there these they this
    those to was were what when where which while who whom why will with within would shown show
    shows image images""".split()
)


def _stem(word: str) -> str:
    """A light suffix stripper (plurals, a few inflections) — enough to match 'lesions'/'lesion'."""
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is", "os")):
        return word[:-1]
    return word


def lexical_tokens(text: str) -> list[str]:
    """Lower-cased, accent-folded word tokens without stopwords, lightly stemmed."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return [_stem(t) for t in _TOKEN.findall(text) if t not in STOPWORDS and (len(t) > 1 or t.isdigit())]


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. ``score`` is what the mode ranked by (reciprocal-rank fusion score,
    cosine similarity or BM25); ``similarity`` is the exact dense cosine similarity between the
    query and the chunk (None when the retriever does not compute it)."""

    chunk_id: str
    score: float
    rank: int
    text: str
    title: str
    doc_id: str = ""
    similarity: float | None = None
    topic: str = ""


class LexicalIndex:
    """BM25 over the docstore's title + text."""

    def __init__(self, texts: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        import bm25s

        self.n = len(texts)
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        if self.n:
            self._bm25.index([lexical_tokens(t) or [""] for t in texts], show_progress=False)
            self._vocab = set(self._bm25.vocab_dict)
        else:
            self._vocab = set()

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        out: list[list[tuple[int, float]]] = [[] for _ in queries]
        if not self.n or not queries:
            return out
        toks = [[t for t in lexical_tokens(q) if t in self._vocab] for q in queries]
        todo = [i for i, t in enumerate(toks) if t]
        if not todo:
            return out
        kk = min(k, self.n)
        docs, scores = self._bm25.retrieve(
            [toks[i] for i in todo], k=kk, show_progress=False, n_threads=0, return_as="tuple"
        )
        for row, qi in enumerate(todo):
            out[qi] = [(int(d), float(s)) for d, s in zip(docs[row], scores[row], strict=True) if s > 0]
        return out


class HybridRetriever:
    """Dense, lexical or hybrid (reciprocal-rank fusion) search over a :class:`KnowledgeIndex`.

    Fusion score of a chunk: ``sum_m w_m / (rrf_k + rank_m)`` over the modes that returned it
    within their top ``candidates``; ties keep the dense order.
    """

    def __init__(
        self,
        index: KnowledgeIndex,
        embedder: Any,
        *,
        rrf_k: int = 60,
        candidates: int = 50,
        dense_weight: float = 1.0,
        lexical_weight: float = 1.0,
        check_embedder: bool = True,
    ) -> None:
        if int(embedder.dim) != index.dim:
            raise ValueError(f"embedder dimension {embedder.dim} != index dimension {index.dim}")
        if check_embedder and str(embedder.name) != index.embedder_name:
            raise ValueError(
                f"index was built with embedder {index.embedder_name!r}, not {embedder.name!r}; "
                "rebuild it or pass check_embedder=False"
            )
        self.index = index
        self.embedder = embedder
        self.rrf_k = rrf_k
        self.candidates = candidates
        self.dense_weight = dense_weight
        self.lexical_weight = lexical_weight
        doc = index.docstore
        self._chunk_ids = doc["chunk_id"].to_list()
        self._texts = doc["text"].to_list()
        self._titles = doc["title"].fill_null("").to_list() if "title" in doc.columns else [""] * doc.height
        self._doc_ids = (
            doc["doc_id"].fill_null("").to_list() if "doc_id" in doc.columns else [""] * doc.height
        )
        self._topics = doc["topic"].fill_null("").to_list() if "topic" in doc.columns else [""] * doc.height
        self.lexical = LexicalIndex([f"{t}\n{x}" for t, x in zip(self._titles, self._texts, strict=True)])
        self._vectors: np.ndarray | None = None

    # -- single modes -------------------------------------------------------------------
    def encode(self, queries: list[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode(queries), dtype=np.float32)

    def dense_candidates(
        self, queries: list[str], k: int, vectors: np.ndarray | None = None
    ) -> list[list[tuple[int, float]]]:
        if not queries or self.index.count == 0:
            return [[] for _ in queries]
        vecs = self.encode(queries) if vectors is None else vectors
        scores, ids = self.index.search(vecs, min(k, self.index.count))
        return [
            [(int(i), float(s)) for i, s in zip(ids[r], scores[r], strict=True) if i >= 0]
            for r in range(len(queries))
        ]

    def chunk_vectors(self, rows: list[int]) -> np.ndarray:
        """The stored (L2-normalised) embeddings of docstore rows, read from ``embeddings.npy``."""
        if self._vectors is None:
            self._vectors = self.index.embeddings(mmap=True)
        if not rows:
            return np.zeros((0, self.index.dim), dtype=np.float32)
        order = np.asarray(rows, dtype=np.int64)
        return np.asarray(self._vectors[order], dtype=np.float32)

    def similarities(self, vectors: np.ndarray, ranked: list[list[tuple[int, float]]]) -> list[list[float]]:
        """Exact cosine similarity of each query vector with each of its ranked rows."""
        out: list[list[float]] = []
        for r, hits in enumerate(ranked):
            rows = [row for row, _ in hits]
            out.append([float(x) for x in self.chunk_vectors(rows) @ vectors[r]] if rows else [])
        return out

    def lexical_candidates(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        return self.lexical.search(queries, k)

    def fuse(
        self, dense: list[tuple[int, float]], lexical: list[tuple[int, float]], k: int
    ) -> list[tuple[int, float]]:
        fused: dict[int, float] = {}
        order: dict[int, int] = {}
        for weight, ranked in ((self.dense_weight, dense), (self.lexical_weight, lexical)):
            for rank, (row, _) in enumerate(ranked, start=1):
                fused[row] = fused.get(row, 0.0) + weight / (self.rrf_k + rank)
                order.setdefault(row, len(order))
        best = sorted(fused.items(), key=lambda kv: (-kv[1], order[kv[0]]))
        return best[:k]

    # -- public -------------------------------------------------------------------------
    def search(
        self,
        queries: list[str] | str,
        k: int = 5,
        mode: Mode = "hybrid",
        min_similarity: float | None = None,
        order: Order = "rank",
    ) -> list[list[Hit]]:
        """The top ``k`` chunks per query, each with its exact dense cosine ``similarity``.

        With ``min_similarity``, chunks whose similarity is not above it are dropped *before*
        the top ``k`` are taken (from the mode's top ``max(k, candidates)``), so a query may
        return fewer than ``k`` hits, or none. ``order="similarity"`` sorts that pool by
        similarity instead of the mode's own order (``rank``) before the top ``k`` are taken:
        the mode then decides which chunks are candidates, the cosine which come first."""
        if isinstance(queries, str):
            queries = [queries]
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if k <= 0 or not queries:
            return [[] for _ in queries]
        depth = max(k, self.candidates) if min_similarity is not None or order == "similarity" else k
        vectors = self.encode(queries) if self.index.count else None
        if mode == "dense":
            ranked = [r[:depth] for r in self.dense_candidates(queries, depth, vectors)]
        elif mode == "lexical":
            ranked = [r[:depth] for r in self.lexical_candidates(queries, depth)]
        else:
            pool = max(k, self.candidates)
            dense = self.dense_candidates(queries, pool, vectors)
            lexical = self.lexical_candidates(queries, pool)
            ranked = [self.fuse(d, lx, depth) for d, lx in zip(dense, lexical, strict=True)]
        sims = self.similarities(vectors, ranked) if vectors is not None else [[] for _ in ranked]
        out: list[list[Hit]] = []
        for hits, sim in zip(ranked, sims, strict=True):
            kept = [
                (row, score, s)
                for (row, score), s in zip(hits, sim, strict=True)
                if min_similarity is None or s > min_similarity
            ]
            if order == "similarity":
                kept.sort(key=lambda t: -t[2])  # stable: equal similarities keep the mode's order
            kept = kept[:k]
            out.append(
                [
                    Hit(
                        chunk_id=self._chunk_ids[row],
                        score=float(score),
                        rank=rank,
                        text=self._texts[row],
                        title=self._titles[row],
                        doc_id=self._doc_ids[row],
                        similarity=s,
                        topic=self._topics[row],
                    )
                    for rank, (row, score, s) in enumerate(kept, start=1)
                ]
            )
        return out


def evaluate_retrieval(
    retriever: HybridRetriever,
    eval_rows: list[dict],
    k: int = 5,
    modes: tuple[str, ...] = MODES,
    match: Literal["doc_id", "chunk_id"] = "doc_id",
) -> dict[str, dict[str, float]]:
    """recall@k (share of queries with a relevant item in the top k) and MRR@k per mode.

    ``eval_rows``: ``{"query": str, "relevant": [ids]}``; ids are document ids by default.
    """
    queries = [r["query"] for r in eval_rows]
    out: dict[str, dict[str, float]] = {}
    for mode in modes:
        results = retriever.search(queries, k=k, mode=mode)  # type: ignore[arg-type]
        hits = 0
        rr = 0.0
        for row, res in zip(eval_rows, results, strict=True):
            relevant = {str(x) for x in row["relevant"]}
            ids = [h.doc_id if match == "doc_id" else h.chunk_id for h in res]
            first = next((i for i, x in enumerate(ids, start=1) if x in relevant), None)
            if first is not None:
                hits += 1
                rr += 1.0 / first
        n = max(1, len(eval_rows))
        out[mode] = {"recall@k": hits / n, "mrr": rr / n, "k": k, "queries": len(eval_rows)}
    return out
