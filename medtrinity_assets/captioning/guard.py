"""A model backend guarded by the quality checks: a description that fails a blocking check (a
claim the evidence contradicts, PHI) is replaced by the embedded captioner's, with the reason.

A multimodal LLM writes richer text than the embedded templates but may invent anatomy, findings
or numbers (a 135M paraphraser wrote "splenic bile canaliculum" for a liver region). The guard
keeps the model's description only when every check of :func:`check_caption` passes; otherwise
the row holds the embedded description and ``fallback_reason`` says what the model's got wrong.
The caption batch reports how many rows fell back.

Containment claims are checked against the other regions given in the same call (a chunk, or
the whole batch for a streaming backend); a region whose container is in another chunk falls
back, which errs on the safe side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from medtrinity_assets.captioning import evidence
from medtrinity_assets.captioning.backends.base import Captioner, CaptionResult
from medtrinity_assets.captioning.backends.embedded import PHRASES_VERSION, EmbeddedCaptioner
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import FACETS
from medtrinity_assets.captioning.quality import check_caption

MAX_REASONS = 4


class GuardedCaptioner(Captioner):
    """``primary`` with the embedded captioner as the fallback for descriptions that fail a check."""

    def __init__(self, primary: Captioner, fallback: Captioner | None = None, phi_values: Iterable[str] = ()) -> None:
        self.primary = primary
        self.fallback = fallback or EmbeddedCaptioner()
        self.phi_values = phi_values
        self.name, self.model, self.prompt_version = primary.name, primary.model, primary.prompt_version
        self.supports_streaming = primary.supports_streaming  # type: ignore[misc]
        self._seen: tuple[set[str], dict] | None = None  # the last slice's images and their evidence

    @property
    def params(self) -> dict[str, Any]:
        return {**self.primary.params, "fallback": f"{self.fallback.name}/{PHRASES_VERSION}"}

    def see(self, items: list[CaptionInput]) -> None:
        """Keep the containment and bordering among the regions of the slice's images: a chunk may
        hold only some of an image's regions (the others in another chunk, or cached), and a claim
        about them checked against the chunk alone would be rejected though true."""
        self._seen = ({i.record_id for i in items}, evidence.nesting(items))
        self.primary.see(items)

    def _nesting(self, items: list[CaptionInput]) -> dict:
        """The evidence of the slice seen last when it holds these items' images, else the chunk's own."""
        if self._seen is not None and all(i.record_id in self._seen[0] for i in items):
            return self._seen[1]
        return evidence.nesting(items)

    def caption(self, items: list[CaptionInput]) -> list[CaptionResult]:
        nested = self._nesting(items)
        return [self.guard(item, res, nested) for item, res in zip(items, self.primary.caption(items), strict=True)]

    async def astream(self, items: list[CaptionInput]) -> AsyncIterator[tuple[int, CaptionResult]]:
        nested = self._nesting(items)
        async for idx, res in self.primary.astream(items):
            yield idx, self.guard(items[idx], res, nested)

    def guard(self, item: CaptionInput, result: CaptionResult, nested: dict | None = None) -> CaptionResult:
        """``result`` if it passes every check, else the fallback's description with the reasons.
        A failed request stays failed (it is retried on the next run)."""
        if result.status != "ok":
            return result
        issues = blocking_issues(item, result, nested, self.phi_values)
        if not issues:
            return result
        [replacement] = self.fallback.caption([item])
        replacement.fallback_reason = "; ".join(issues[:MAX_REASONS])
        replacement.raw = result.text  # the rejected description, for review
        return replacement

    def close(self) -> None:
        self.primary.close()


def blocking_issues(
    item: CaptionInput, result: CaptionResult, nested: dict | None = None, phi_values: Iterable[str] = ()
) -> list[str]:
    """The issues of a description that make it unfit to keep (no issues: keep it)."""
    row = {
        "record_id": item.record_id,
        "roi_id": item.roi_id,
        "status": "ok",
        "text": result.text,
        "retrieved_chunk_ids": item.chunk_ids,
        **{f"facet_{k}": (result.facets or {}).get(k) for k in FACETS},
    }
    key = (item.record_id, str(item.roi_id))
    res = check_caption(row, item, phi_values=phi_values, nested=(nested or {}).get(key, set()))
    if res["consistent"] and not res["phi_found"]:
        return []
    return [i if not i.startswith("phi") else "phi found" for i in res["issues"]] or ["failed a check"]
