"""Configurable resources: where data lives, which models run, on which device.

Each resource is plain configuration with a method that builds the domain object; heavy
imports happen only when a step needs them, so loading the code location stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_out_dir() -> str:
    return os.environ.get("MEDTRINITY_OUT", str(REPO_ROOT / "data" / "out"))


def default_registry_dir() -> str:
    return os.environ.get("MEDTRINITY_SOURCES", str(REPO_ROOT / "data" / "sources"))


class PipelineStorage(dg.ConfigurableResource):
    """Output root and source registry folder."""

    out_dir: str = Field(default_factory=default_out_dir, description="output root (local path)")
    registry_dir: str = Field(default_factory=default_registry_dir, description="folder of source YAMLs")

    def out(self) -> Path:
        path = Path(self.out_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def source(self, name: str):
        from medtrinity_assets.registry import find_source

        return find_source(self.registry_dir, name)

    def local_source(self, name: str):
        """The spec of a source with a remote (fsspec) root mirrored under the output root."""
        from medtrinity_assets.remote import mirror_remote_root

        return mirror_remote_root(self.source(name), self.out() / "_remote_cache")

    def sources(self):
        from medtrinity_assets.registry import load_registry

        specs, _ = load_registry(self.registry_dir, strict=False)
        return specs


class ComputeResource(dg.ConfigurableResource):
    """Device and parallelism for CPU/GPU-bound steps."""

    device: Literal["cpu", "cuda", "auto"] = "cpu"
    workers: int = Field(2, ge=1, description="processes for image decoding/preprocessing")
    batch_size: int = Field(32, ge=1)

    def resolved_device(self) -> str:
        if self.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


class EmbedderResource(dg.ConfigurableResource):
    """Sentence embedder for the knowledge index (default: MiniLM shipped in a wheel)."""

    model_path: str | None = Field(None, description="local sentence-transformers folder; None = default")
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = 64

    def get(self):
        from medtrinity_assets.knowledge.embedder import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(self.model_path, device=self.device, batch_size=self.batch_size)


class KnowledgeConfig(dg.ConfigurableResource):
    """Which corpora make up the knowledge base and how retrieval runs."""

    corpus_paths: list[str] = Field(default_factory=list, description="folders/URLs of JSONL, txt, md")
    include_default: bool = True
    chunk_tokens: int = 200
    overlap_tokens: int = 30
    top_k: int = 5
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"


class CaptionerResource(dg.ConfigurableResource):
    """The multimodal captioner: embedded (default), an OpenAI-compatible fleet, or a local VLM."""

    backend: Literal["embedded", "openai_compatible", "transformers_local"] = "embedded"
    model: str = ""
    base_urls: list[str] = Field(default_factory=list)
    api_key_env: str = "MEDTRINITY_API_KEY"
    max_in_flight: int = 32
    timeout_s: float = 120.0
    max_retries: int = 5
    temperature: float = 0.1
    max_tokens: int = 1024
    model_path: str | None = Field(None, description="transformers_local: local model folder (safetensors)")
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(4, ge=1, description="transformers_local: conversations per generate call")
    chunk_size: int = 64

    def get(self) -> Any:
        from medtrinity_assets.captioning import make_captioner

        return make_captioner(self.model_dump())


class JudgeResource(dg.ConfigurableResource):
    """Optional MLLM judge (OpenAI-compatible) scoring each facet 0–10."""

    enabled: bool = False
    model: str = ""
    base_urls: list[str] = Field(default_factory=list)
    api_key_env: str = "MEDTRINITY_JUDGE_API_KEY"
    max_in_flight: int = 16
    timeout_s: float = 120.0

    def get(self) -> Any:
        if not self.enabled:
            return None
        from medtrinity_assets.captioning import make_judge

        return make_judge(self.model_dump())


def default_resources() -> dict[str, Any]:
    return {
        "storage": PipelineStorage(),
        "compute": ComputeResource(),
        "embedder": EmbedderResource(),
        "knowledge": KnowledgeConfig(),
        "captioner": CaptionerResource(),
        "judge": JudgeResource(),
    }
