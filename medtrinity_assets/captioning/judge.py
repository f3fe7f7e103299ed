"""The optional MLLM judge: scores each facet of a description from 0 to 10 against the
reference information (measured attributes and metadata), on any OpenAI-compatible endpoint."""

from __future__ import annotations

import json
from typing import Any

from medtrinity_assets.captioning.backends.base import run_sync
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import FACETS, _json_objects, build_reference_text

JUDGE_RUBRIC = (
    "You are grading a description of a medical image region against reference information (the "
    "measured attributes and metadata, which are correct). Score each of the five facets from 0 to 10: "
    "modality (correct imaging modality); organ (correct anatomy/tissue); roi_location (position, size "
    "and shape agree with the measurements); roi_texture (intensity and texture agree with the "
    "measurements); relationship (relations to other structures and the disease context are correct "
    "and grounded). 10 = fully correct and specific, 5 = partly correct or vague, 0 = wrong or missing. "
    'Reply with ONLY a JSON object: {"modality": n, "organ": n, "roi_location": n, "roi_texture": n, '
    '"relationship": n}.'
)


def parse_scores(text: str) -> dict[str, float] | None:
    """The first JSON object in ``text`` with all five facet scores in [0, 10], or None."""
    for obj, _, _ in _json_objects(text or ""):
        try:
            scores = {k: float(obj[k]) for k in FACETS}
        except (KeyError, TypeError, ValueError):
            continue
        if all(0.0 <= v <= 10.0 for v in scores.values()):
            return scores
    return None


class Judge:
    """An MLLM judge on any OpenAI-compatible endpoint (the same client as the captioner)."""

    def __init__(self, client: Any, *, temperature: float = 0.0, max_tokens: int = 256) -> None:
        self.client = client
        self.temperature = temperature
        self.max_tokens = max_tokens

    def score(self, items: list[tuple[CaptionInput, str, dict[str, Any]]]) -> list[dict[str, float] | None]:
        return run_sync(self.ascore(items))

    async def ascore(self, items: list[tuple[CaptionInput, str, dict[str, Any]]]) -> list[dict[str, float] | None]:
        import asyncio

        async with self.client.session():
            return list(await asyncio.gather(*(self._one(*it) for it in items)))

    async def _one(self, item: CaptionInput, text: str, facets: dict[str, Any]) -> dict[str, float] | None:
        from medtrinity_assets.captioning.backends.openai_compatible import ChatRequestError

        user = (
            "Reference information:\n" + build_reference_text(item)
            + "\n\nDescription to grade:\n" + text
            + "\n\nFacets as given:\n" + json.dumps(facets, ensure_ascii=False)
        )
        messages = [{"role": "system", "content": JUDGE_RUBRIC}, {"role": "user", "content": user}]
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        try:
            reply = await self.client.chat(messages, **params)
            scores = parse_scores(reply)
            if scores is None:
                reply = await self.client.chat(
                    [*messages, {"role": "assistant", "content": reply},
                     {"role": "user", "content": "Return ONLY the JSON object of five scores from 0 to 10."}],
                    **params,
                )
                scores = parse_scores(reply)
        except ChatRequestError:
            return None
        return scores
