"""OpenAI-compatible chat-completions backend (vLLM, SGLang, hosted APIs; a fleet of base URLs).

- many requests in flight (an asyncio semaphore), spread over base URLs by least-in-flight with
  round-robin tie-breaking;
- per-request timeout; retries with exponential backoff and full jitter on 429, 5xx, timeouts
  and dropped connections, honouring ``Retry-After`` (seconds); a bounded number of attempts;
- facets parsed from the reply's JSON object, with ONE repair request when it is missing;
  otherwise the item is recorded ``failed`` with the raw reply kept;
- the API key is read from the environment variable named in the config and never appears in
  logs, errors or params.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from medtrinity_assets.captioning.backends.base import (
    Captioner,
    CaptionerConfigError,
    CaptionResult,
    run_sync,
)
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import (
    FacetParseError,
    build_messages,
    image_data_url,
    parse_reply,
    repair_messages,
)

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ChatRequestError(RuntimeError):
    """A chat request that failed for good (non-retryable status, or attempts exhausted)."""

    def __init__(self, message: str, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


@dataclass
class _Endpoint:
    base_url: str
    in_flight: int = 0
    requests: int = 0
    failures: int = 0


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    failures: int = 0
    repairs: int = 0
    retry_after_waits: int = 0


class ChatClient:
    """Async chat-completions client shared by the captioner and the judge.

    Use ``async with client.session(): ...`` around a batch of :meth:`chat` calls; it owns one
    ``httpx.AsyncClient`` (connection pool) for the batch.
    """

    def __init__(
        self,
        base_urls: list[str],
        model: str,
        *,
        api_key_env: str | None = None,
        max_in_flight: int = 32,
        timeout_s: float = 120.0,
        max_attempts: int = 6,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
        log: logging.Logger | None = None,
        seed: int | None = None,
    ) -> None:
        if not base_urls:
            raise CaptionerConfigError("an OpenAI-compatible backend needs at least one base URL")
        for url in base_urls:
            if not re.match(r"^https?://", url):
                raise CaptionerConfigError(f"base URL must start with http:// or https://: {url!r}")
        if max_in_flight < 1 or max_attempts < 1:
            raise CaptionerConfigError("max_in_flight and max_attempts must be at least 1")
        self.endpoints = [_Endpoint(u.rstrip("/")) for u in base_urls]
        self.model = model
        self.api_key_env = api_key_env
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.transport = transport
        self.log = log or logger
        self.stats = ClientStats()
        self._rr = 0
        self._rng = random.Random(seed)
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None

    # -- secrets -----------------------------------------------------------------------------
    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def _scrub(self, text: str) -> str:
        key = self._api_key()
        if key:
            text = text.replace(key, "***")
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)

    # -- session -----------------------------------------------------------------------------
    def session(self) -> _Session:
        return _Session(self)

    async def _open(self) -> None:
        headers = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif self.api_key_env:
            self.log.info("environment variable %s is not set; sending requests without an API key",
                          self.api_key_env)
        limits = httpx.Limits(max_connections=self.max_in_flight + 4,
                              max_keepalive_connections=self.max_in_flight + 4)
        self._client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(self.timeout_s), limits=limits, transport=self.transport
        )
        self._sem = asyncio.Semaphore(self.max_in_flight)

    async def _close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client = None
        self._sem = None

    # -- load balancing ----------------------------------------------------------------------
    def _pick(self) -> _Endpoint:
        n = len(self.endpoints)
        best = None
        for k in range(n):
            ep = self.endpoints[(self._rr + k) % n]
            if best is None or ep.in_flight < best.in_flight:
                best = ep
        self._rr = (self._rr + 1) % n
        return best  # type: ignore[return-value]

    def _backoff(self, attempt: int) -> float:
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return self._rng.uniform(cap / 2, cap)  # "equal jitter": never zero, never above the cap

    @staticmethod
    def _retry_after(resp: httpx.Response) -> float | None:
        value = resp.headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value.strip())
        except ValueError:
            return None
        return max(0.0, seconds)

    # -- one request with retries --------------------------------------------------------------
    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> str:
        """The assistant's reply text; raises :class:`ChatRequestError` when it cannot get one."""
        if self._client is None or self._sem is None:
            async with self.session():
                return await self.chat(messages, **params)
        body = {"model": self.model, "messages": messages, **params}
        payload = json.dumps(body).encode("utf-8")
        last_error = "no attempt made"
        last_status: int | None = None
        for attempt in range(1, self.max_attempts + 1):
            delay: float | None = None
            async with self._sem:
                ep = self._pick()
                ep.in_flight += 1
                ep.requests += 1
                self.stats.requests += 1
                try:
                    resp = await self._client.post(f"{ep.base_url}/chat/completions", content=payload)
                except httpx.TimeoutException as exc:
                    last_error, last_status = f"timeout after {self.timeout_s:g}s ({type(exc).__name__})", None
                except httpx.TransportError as exc:
                    last_error, last_status = f"connection error ({type(exc).__name__})", None
                else:
                    last_status = resp.status_code
                    if resp.status_code == 200:
                        try:
                            return _reply_text(resp.json())
                        except (ValueError, KeyError, IndexError, TypeError) as exc:
                            last_error = f"malformed response body ({type(exc).__name__})"
                    elif resp.status_code in RETRYABLE_STATUS or resp.status_code >= 500:
                        last_error = f"HTTP {resp.status_code}"
                        ra = self._retry_after(resp)
                        if ra is not None:
                            delay = min(ra, self.retry_after_max_s)
                            self.stats.retry_after_waits += 1
                    else:
                        ep.failures += 1
                        self.stats.failures += 1
                        detail = self._scrub(resp.text[:300])
                        raise ChatRequestError(f"HTTP {resp.status_code}: {detail}", attempt, resp.status_code)
                finally:
                    ep.in_flight -= 1
            ep.failures += 1
            if attempt == self.max_attempts:
                break
            if delay is None:
                delay = self._backoff(attempt)
            self.stats.retries += 1
            self.log.info("chat request to %s failed (%s); retry %d/%d in %.2fs",
                          ep.base_url, last_error, attempt, self.max_attempts - 1, delay)
            await asyncio.sleep(delay)
        self.stats.failures += 1
        raise ChatRequestError(
            self._scrub(f"{last_error}; gave up after {self.max_attempts} attempts"), self.max_attempts, last_status
        )


class _Session:
    def __init__(self, client: ChatClient) -> None:
        self.client = client

    async def __aenter__(self) -> ChatClient:
        await self.client._open()
        return self.client

    async def __aexit__(self, *exc: Any) -> None:
        await self.client._close()


def _reply_text(body: dict[str, Any]) -> str:
    content = body["choices"][0]["message"]["content"]
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise TypeError("message content is not text")
    return content


class OpenAICompatibleCaptioner(Captioner):
    """Captions through a fleet of OpenAI-compatible servers."""

    name = "openai_compatible"
    supports_streaming = True

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> OpenAICompatibleCaptioner:
        return cls(
            list(settings.get("base_urls") or []),
            settings.get("model") or "",
            api_key_env=settings.get("api_key_env"),
            max_in_flight=int(settings.get("max_in_flight", 32)),
            timeout_s=float(settings.get("timeout_s", 120.0)),
            max_retries=int(settings.get("max_retries", 5)),
            temperature=float(settings.get("temperature", 0.1)),
            max_tokens=int(settings.get("max_tokens", 1024)),
        )

    def __init__(
        self,
        base_urls: list[str],
        model: str,
        *,
        api_key_env: str | None = "MEDTRINITY_API_KEY",
        max_in_flight: int = 32,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        temperature: float = 0.1,
        max_tokens: int = 1024,
        send_image: bool = True,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if not model:
            raise CaptionerConfigError("an OpenAI-compatible backend needs a model name")
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.send_image = send_image
        self.client = ChatClient(
            base_urls, model, api_key_env=api_key_env, max_in_flight=max_in_flight, timeout_s=timeout_s,
            max_attempts=max_retries + 1, backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
            transport=transport, log=log,
        )

    @property
    def params(self) -> dict[str, Any]:
        # what changes the output; never the key, never the URLs (the fleet serves one model)
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "send_image": self.send_image}

    def caption(self, items: list[CaptionInput]) -> list[CaptionResult]:
        return run_sync(self.acaption(items))

    async def acaption(self, items: list[CaptionInput]) -> list[CaptionResult]:
        async with self.client.session():
            return list(await asyncio.gather(*(self._one(item) for item in items)))

    async def astream(self, items: list[CaptionInput]) -> AsyncIterator[tuple[int, CaptionResult]]:
        """``(index, result)`` pairs in completion order, one session for all items.

        At most ``2 * max_in_flight`` items are started ahead (the semaphore bounds requests),
        so a long batch keeps the fleet busy without a barrier between chunks.
        """
        window = 2 * self.client.max_in_flight
        source = iter(enumerate(items))
        pending: set[asyncio.Task] = set()

        async def indexed(i: int, item: CaptionInput) -> tuple[int, CaptionResult]:
            return i, await self._one(item)

        def refill() -> None:
            while len(pending) < window:
                nxt = next(source, None)
                if nxt is None:
                    return
                pending.add(asyncio.create_task(indexed(*nxt)))

        async with self.client.session():
            try:
                refill()
                while pending:
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        pending.discard(task)
                        yield task.result()
                    refill()
            finally:
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self, item: CaptionInput) -> CaptionResult:
        try:
            url = None
            if self.send_image and item.image_path:
                url = await asyncio.to_thread(image_data_url, item)
        except Exception as exc:
            return CaptionResult.failed(f"image unreadable: {type(exc).__name__}: {exc}")
        messages = build_messages(item, url)
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        try:
            reply = await self.client.chat(messages, **params)
        except ChatRequestError as exc:
            return CaptionResult.failed(str(exc))
        try:
            text, facets = parse_reply(reply)
            return CaptionResult(text=text, facets=facets, status="ok", raw=reply)
        except FacetParseError:
            pass
        self.client.stats.repairs += 1
        try:
            fixed = await self.client.chat(repair_messages(messages, reply), **params)
        except ChatRequestError as exc:
            return CaptionResult.failed(f"reply had no facet JSON; repair request failed: {exc}", raw=reply)
        try:
            _, facets = parse_reply(fixed)
        except FacetParseError as exc:
            return CaptionResult.failed(f"reply had no facet JSON, also after one repair: {exc}",
                                        raw=reply + "\n--- repair reply ---\n" + fixed)
        text = _paragraph_before_json(reply) or " ".join(facets.values())
        return CaptionResult(text=text, facets=facets, status="ok", raw=reply + "\n--- repair reply ---\n" + fixed)


def _paragraph_before_json(reply: str) -> str:
    """The prose of a reply whose JSON was broken: everything before the first ``{``."""
    head = reply.split("{", 1)[0]
    head = re.sub(r"```(?:json)?", "", head).strip()
    return head if len(head) >= 40 else ""

