"""Stage 5: multigranular descriptions (prompt, captioner backends, resumable batches, checks).

Public API:

- :class:`CaptionInput`, :func:`build_caption_inputs` — what the captioner sees for one ROI;
- :data:`PROMPT_VERSION`, :func:`build_messages`, :func:`inputs_hash` — the versioned prompt;
- :class:`Captioner`, :class:`CaptionResult` and the backends :class:`EmbeddedCaptioner`,
  :class:`OpenAICompatibleCaptioner`, :class:`TransformersLocalCaptioner`;
- :func:`run_caption_batch` — cached, chunk-durable, resumable caption tables;
- :func:`check_captions`, :class:`Judge` — claim-level checks, PHI scan and the optional judge;
- :func:`make_captioner`, :func:`make_judge` — backends from resource configuration.
"""

from __future__ import annotations

from typing import Any

from medtrinity_assets.captioning.base import Captioner, CaptionerConfigError, CaptionResult
from medtrinity_assets.captioning.batch import CAPTION_COLUMNS, BatchResult, run_caption_batch
from medtrinity_assets.captioning.embedded import EmbeddedCaptioner
from medtrinity_assets.captioning.inputs import CaptionInput, Passage, build_caption_inputs
from medtrinity_assets.captioning.prompt import (
    FACETS,
    PROMPT_VERSION,
    build_messages,
    build_user_text,
    inputs_hash,
    parse_reply,
    render_overlay,
)
from medtrinity_assets.captioning.quality import Judge, check_captions

__all__ = [
    "CAPTION_COLUMNS", "FACETS", "PROMPT_VERSION", "BatchResult", "CaptionInput", "CaptionResult", "Captioner",
    "CaptionerConfigError", "EmbeddedCaptioner", "Judge", "Passage", "build_caption_inputs", "build_messages",
    "build_user_text", "check_captions", "inputs_hash", "make_captioner", "make_judge", "parse_reply",
    "render_overlay", "run_caption_batch",
]


def make_captioner(config: dict[str, Any]) -> Captioner:
    """A captioner from a ``CaptionerResource``-shaped dict (``backend`` selects the kind)."""
    backend = config.get("backend", "embedded")
    if backend == "embedded":
        return EmbeddedCaptioner()
    if backend == "openai_compatible":
        from medtrinity_assets.captioning.openai_compatible import OpenAICompatibleCaptioner

        return OpenAICompatibleCaptioner(
            list(config.get("base_urls") or []),
            config.get("model") or "",
            api_key_env=config.get("api_key_env"),
            max_in_flight=int(config.get("max_in_flight", 32)),
            timeout_s=float(config.get("timeout_s", 120.0)),
            max_retries=int(config.get("max_retries", 5)),
            temperature=float(config.get("temperature", 0.1)),
            max_tokens=int(config.get("max_tokens", 1024)),
        )
    if backend == "transformers_local":
        from medtrinity_assets.captioning.transformers_local import TransformersLocalCaptioner

        return TransformersLocalCaptioner(
            config.get("model_path"),
            device=config.get("device", "cpu"),
            batch_size=int(config.get("batch_size", 4)),
            temperature=float(config.get("temperature", 0.1)),
            max_new_tokens=int(config.get("max_tokens", 1024)),
        )
    raise CaptionerConfigError(f"unknown captioner backend {backend!r}")


def make_judge(config: dict[str, Any]) -> Judge | None:
    """A judge from a ``JudgeResource``-shaped dict; None when disabled."""
    if not config.get("enabled", True):
        return None
    from medtrinity_assets.captioning.openai_compatible import ChatClient

    client = ChatClient(
        list(config.get("base_urls") or []),
        config.get("model") or "",
        api_key_env=config.get("api_key_env"),
        max_in_flight=int(config.get("max_in_flight", 16)),
        timeout_s=float(config.get("timeout_s", 120.0)),
        max_attempts=int(config.get("max_retries", 5)) + 1,
    )
    return Judge(client)
