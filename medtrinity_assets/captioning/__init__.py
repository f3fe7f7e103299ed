"""Stage 5: multigranular descriptions (prompt, captioner backends, resumable batches, checks).

Public API:

- :class:`CaptionInput`, :func:`build_caption_inputs` — what the captioner sees for one ROI;
- :data:`PROMPT_VERSION`, :func:`build_messages`, :func:`inputs_hash` — the versioned prompt;
- :class:`Captioner`, :class:`CaptionResult` and the backends :class:`EmbeddedCaptioner`,
  :class:`OpenAICompatibleCaptioner`, :class:`TransformersLocalCaptioner`;
- :func:`run_caption_batch`, :func:`run_caption_slices` — cached, chunk-durable, resumable caption
  tables, written slice by slice;
- :func:`check_captions`, :class:`Judge` — claim-level checks, PHI scan and the optional judge;
- :func:`make_captioner` (a backend by its registered name), :func:`make_judge` — from settings.
"""

from __future__ import annotations

from typing import Any

from medtrinity_assets.captioning.backends import make_captioner
from medtrinity_assets.captioning.backends.base import Captioner, CaptionerConfigError, CaptionResult
from medtrinity_assets.captioning.backends.embedded import EmbeddedCaptioner
from medtrinity_assets.captioning.batch import (
    CAPTION_COLUMNS,
    BatchResult,
    run_caption_batch,
    run_caption_slices,
)
from medtrinity_assets.captioning.inputs import CaptionInput, Passage, build_caption_inputs
from medtrinity_assets.captioning.judge import Judge
from medtrinity_assets.captioning.prompt import (
    FACETS,
    PROMPT_VERSION,
    build_messages,
    build_user_text,
    inputs_hash,
    parse_reply,
    render_overlay,
)
from medtrinity_assets.captioning.quality import check_captions

__all__ = [
    "CAPTION_COLUMNS", "FACETS", "PROMPT_VERSION", "BatchResult", "CaptionInput", "CaptionResult", "Captioner",
    "CaptionerConfigError", "EmbeddedCaptioner", "Judge", "Passage", "build_caption_inputs", "build_messages",
    "build_user_text", "check_captions", "inputs_hash", "make_captioner", "make_judge", "parse_reply",
    "render_overlay", "run_caption_batch", "run_caption_slices",
]


def make_judge(config: dict[str, Any]) -> Judge | None:
    """A judge from a ``JudgeResource``-shaped dict; None when disabled."""
    if not config.get("enabled", True):
        return None
    from medtrinity_assets.captioning.backends.openai_compatible import ChatClient

    client = ChatClient(
        list(config.get("base_urls") or []),
        config.get("model") or "",
        api_key_env=config.get("api_key_env"),
        max_in_flight=int(config.get("max_in_flight", 16)),
        timeout_s=float(config.get("timeout_s", 120.0)),
        max_attempts=int(config.get("max_retries", 5)) + 1,
    )
    return Judge(client)
