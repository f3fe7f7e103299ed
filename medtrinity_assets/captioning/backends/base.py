"""The captioner interface shared by every backend."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import PROMPT_VERSION, inputs_hash


@dataclass
class CaptionResult:
    """One description: the paragraph, the five facets, and how it went."""

    text: str = ""
    facets: dict[str, str] = field(default_factory=dict)
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    raw: str | None = None
    #: set when this is the fallback's description, replacing one that failed a blocking check
    fallback_reason: str | None = None

    @classmethod
    def failed(cls, error: str, raw: str | None = None) -> CaptionResult:
        return cls(text="", facets={}, status="failed", error=error, raw=raw)


class CaptionerConfigError(ValueError):
    """A captioner was configured in a way that cannot work (missing path, bad URL...)."""


class Captioner(ABC):
    """A backend that turns :class:`CaptionInput` items into :class:`CaptionResult` items.

    ``name`` (the backend), ``model`` and ``params`` go into every caption's cache key, so
    ``params`` holds everything that changes the output and nothing secret.
    """

    name: str = "captioner"
    model: str = ""
    prompt_version: str = PROMPT_VERSION
    #: a backend that sets this implements :meth:`astream`: results arrive as they finish (many
    #: requests in flight) and the batch writes them without a barrier between chunks
    supports_streaming: ClassVar[bool] = False
    #: a backend that sets this is plain computation in the calling process, stateless between
    #: calls and picklable: a large shard is described on worker processes
    #: (:mod:`medtrinity_assets.captioning.parallel_batch`); servers and models stay in one process
    runs_in_workers: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> Captioner:
        """The backend from the fields of its settings (its resource class); default: no fields."""
        return cls(**settings)

    @property
    def params(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def caption(self, items: list[CaptionInput]) -> list[CaptionResult]:
        """One result per item, same order; a failure is a ``failed`` result, not an exception."""

    async def astream(self, items: list[CaptionInput]) -> AsyncIterator[tuple[int, CaptionResult]]:
        """``(index, result)`` pairs in completion order (streaming backends only)."""
        raise NotImplementedError(f"captioner {self.name} does not stream")
        yield  # pragma: no cover - makes this an async generator

    def inputs_hash(self, item: CaptionInput) -> str:
        return inputs_hash(item, self.name, self.model, self.params, self.prompt_version)

    def see(self, items: list[CaptionInput]) -> None:  # noqa: B027 - optional hook
        """The whole slice a batch is about to describe in chunks (whole images, cached regions
        included), before the first chunk; a backend that checks a description against the other
        regions of its image (the guard) keeps what it needs."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (models, connections)."""


def run_sync(coro: Coroutine) -> Any:
    """Run a coroutine from synchronous code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="captioner-loop")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
