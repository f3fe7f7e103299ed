"""Knowledge base: corpus ingestion, embedder, Faiss index, BM25 and hybrid retrieval (stage 4).

Heavy libraries (faiss, sentence-transformers, bm25s, langchain) are imported by the submodules
that need them; importing this package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "CorpusResult",
    "ingest_corpora",
    "Embedder",
    "SentenceTransformerEmbedder",
    "IndexConfig",
    "IndexBuildResult",
    "IndexIntegrityError",
    "KnowledgeIndex",
    "build_index",
    "load_index",
    "Hit",
    "HybridRetriever",
    "evaluate_retrieval",
    "KnowledgeRetriever",
]

_WHERE = {
    "CorpusResult": "corpus",
    "ingest_corpora": "corpus",
    "Embedder": "embedder",
    "SentenceTransformerEmbedder": "embedder",
    "IndexConfig": "faiss_index",
    "IndexBuildResult": "index",
    "IndexIntegrityError": "index_files",
    "KnowledgeIndex": "index",
    "build_index": "index",
    "load_index": "index",
    "Hit": "retrieval",
    "HybridRetriever": "retrieval",
    "evaluate_retrieval": "retrieval",
    "KnowledgeRetriever": "langchain_adapter",
}

if TYPE_CHECKING:  # pragma: no cover
    from medtrinity_assets.knowledge.corpus import CorpusResult, ingest_corpora
    from medtrinity_assets.knowledge.embedder import Embedder, SentenceTransformerEmbedder
    from medtrinity_assets.knowledge.faiss_index import IndexConfig
    from medtrinity_assets.knowledge.index import IndexBuildResult, KnowledgeIndex, build_index, load_index
    from medtrinity_assets.knowledge.index_files import IndexIntegrityError
    from medtrinity_assets.knowledge.langchain_adapter import KnowledgeRetriever
    from medtrinity_assets.knowledge.retrieval import Hit, HybridRetriever, evaluate_retrieval


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        module = importlib.import_module(f"medtrinity_assets.knowledge.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
