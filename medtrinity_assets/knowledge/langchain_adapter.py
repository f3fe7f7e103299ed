"""LangChain view of the hybrid retriever: a ``BaseRetriever`` returning ``Document``s."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict


class KnowledgeRetriever(BaseRetriever):
    """Wraps :class:`~medtrinity_assets.knowledge.retrieval.HybridRetriever`.

    Each ``Document`` carries ``chunk_id``, ``doc_id``, ``title``, ``score``, ``rank`` and
    ``mode`` in its metadata.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any
    k: int = 5
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"

    def _to_documents(self, hits) -> list[Document]:
        return [
            Document(
                page_content=h.text,
                metadata={
                    "chunk_id": h.chunk_id,
                    "doc_id": h.doc_id,
                    "title": h.title,
                    "score": h.score,
                    "rank": h.rank,
                    "mode": self.mode,
                },
            )
            for h in hits
        ]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return self._to_documents(self.retriever.search([query], k=self.k, mode=self.mode)[0])

    def batch_documents(self, queries: list[str]) -> list[list[Document]]:
        """Many queries in one embedding call and one index search."""
        return [self._to_documents(h) for h in self.retriever.search(list(queries), k=self.k, mode=self.mode)]
