"""Captioner backends, registered by the name users write in settings (``backend: ...``).

Each backend is a :class:`~medtrinity_assets.captioning.backends.base.Captioner` subclass; its
module is imported only when the backend is used (a local VLM pulls in transformers, an
OpenAI-compatible client httpx). Add a backend by writing its module and one line in
:data:`BACKENDS` (its settings class lives in ``defs/resources.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

from medtrinity_assets.captioning.backends.base import Captioner, CaptionerConfigError, CaptionResult

#: backend name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "embedded": ("medtrinity_assets.captioning.backends.embedded", "EmbeddedCaptioner"),
    "openai_compatible": ("medtrinity_assets.captioning.backends.openai_compatible", "OpenAICompatibleCaptioner"),
    "transformers_local": ("medtrinity_assets.captioning.backends.transformers_local", "TransformersLocalCaptioner"),
}

__all__ = ["BACKENDS", "CaptionResult", "Captioner", "CaptionerConfigError", "backend_class", "make_captioner"]


def backend_class(backend: str) -> type[Captioner]:
    """The captioner class registered under ``backend``."""
    try:
        module, name = BACKENDS[backend]
    except KeyError:
        raise CaptionerConfigError(
            f"unknown captioner backend {backend!r}; known: {', '.join(BACKENDS)}"
        ) from None
    return getattr(importlib.import_module(module), name)


def make_captioner(backend: str | dict[str, Any], settings: dict[str, Any] | None = None) -> Captioner:
    """A captioner of ``backend`` built from its settings (the fields of its resource class).

    ``make_captioner({"backend": "openai_compatible", ...})`` reads the name from the mapping.
    """
    if isinstance(backend, dict):
        settings = dict(backend)
        backend = str(settings.pop("backend", "embedded"))
    settings = {k: v for k, v in (settings or {}).items() if k != "chunk_size"}
    return backend_class(backend).from_settings(settings)
