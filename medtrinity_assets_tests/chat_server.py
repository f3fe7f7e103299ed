"""A real HTTP server speaking the OpenAI chat-completions API, for tests and benchmarks.

Written on ``asyncio.start_server`` (HTTP/1.1 with keep-alive), running in a background thread
on 127.0.0.1 with a random port. Behaviours are injectable per request:

- ``latency_s``: delay before every answer;
- a ``plan``: a list of actions for the first requests, then ``default``;
- ``rates``: seeded random actions (e.g. ``{"429": 0.1, "500": 0.1, "drop": 0.05}``);
- ``decide(n, body) -> action``: full control.

Actions: ``ok``; ``429`` (with ``Retry-After: retry_after_s``); ``500``; ``503``; ``400``;
``malformed`` (the reply content has no JSON; a repair request is then answered correctly);
``malformed_always``; ``echo_auth_400`` (a 400 whose body repeats the Authorization header, to
test that clients scrub secrets); ``drop`` (close the socket without a response); ``garbage`` (a 200 whose
body is not JSON).

The reply echoes ``tag=<sha256(user text)[:12]>`` so a test can check each caption came from
its own request. A request whose system message is the judge rubric gets facet scores
(``judge_scores``) instead of a caption.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REPAIR_MARKER = "Return ONLY that JSON object"


def user_text(body: dict[str, Any]) -> str:
    """The text of the first user message (the caption prompt)."""
    for msg in body.get("messages", []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def tag_for(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def good_reply(tag: str) -> str:
    facets = {
        "modality": f"A computed tomography image (tag={tag}).",
        "organ": "The head is shown.",
        "roi_location": "The region lies in the left third of the image.",
        "roi_texture": "It is hyperdense and homogeneous.",
        "relationship": "It is the only region of interest.",
    }
    para = " ".join(facets.values())
    return f"{para}\n\n```json\n{json.dumps(facets)}\n```"


@dataclass
class ServerStats:
    requests: int = 0
    actions: Counter = field(default_factory=Counter)
    auth_headers: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0
    # (monotonic time, action) per request, for Retry-After timing checks
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    tags: Counter = field(default_factory=Counter)
    images: int = 0  # requests that carried an image_url data URL


class ChatServer:
    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        plan: list[str] | None = None,
        default: str = "ok",
        rates: dict[str, float] | None = None,
        decide: Callable[[int, dict[str, Any]], str] | None = None,
        retry_after_s: float = 1.0,
        seed: int = 0,
        judge_scores: dict[str, float] | None = None,
    ) -> None:
        self.judge_scores = judge_scores or {"modality": 9, "organ": 8, "roi_location": 7, "roi_texture": 6,
                                             "relationship": 5}
        self.latency_s = latency_s
        self.plan = list(plan or [])
        self.default = default
        self.rates = dict(rates or {})
        self.decide = decide
        self.retry_after_s = retry_after_s
        self.rng = random.Random(seed)
        self.stats = ServerStats()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self._run, name="chat-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("chat server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    # -- behaviour -----------------------------------------------------------------------------
    def _action(self, n: int, body: dict[str, Any]) -> str:
        if self.decide is not None:
            return self.decide(n, body)
        with self._lock:
            if self.plan:
                return self.plan.pop(0)
            r = self.rng.random()
        acc = 0.0
        for action, p in self.rates.items():
            acc += p
            if r < acc:
                return action
        return self.default

    # -- HTTP ----------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                raw = await reader.readexactly(length) if length else b""
                keep = await self._respond(method, path, headers, raw, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _respond(self, method: str, path: str, headers: dict, raw: bytes, writer) -> bool:
        if method != "POST" or not path.endswith("/chat/completions"):
            await self._send(writer, 404, {"error": {"message": "not found"}})
            return True
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            await self._send(writer, 400, {"error": {"message": "bad json"}})
            return True
        with self._lock:
            n = self.stats.requests
            self.stats.requests += 1
            self.stats.auth_headers.append(headers.get("authorization", ""))
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        text = user_text(body)
        tag = tag_for(text)
        for msg in body.get("messages", []):
            if isinstance(msg.get("content"), list) and any(
                p.get("type") == "image_url" and p["image_url"]["url"].startswith("data:image/png;base64,")
                for p in msg["content"]
            ):
                with self._lock:
                    self.stats.images += 1
        is_repair = any(
            m.get("role") == "user" and isinstance(m.get("content"), str) and REPAIR_MARKER in m["content"]
            for m in body.get("messages", [])
        )
        action = self._action(n, body)
        with self._lock:
            self.stats.actions[action] += 1
            self.stats.timeline.append((time.monotonic(), action, tag))
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if action == "drop":
                writer.transport.abort()
                return False
            if action == "429":
                await self._send(writer, 429, {"error": {"message": "rate limited"}},
                                 extra={"Retry-After": f"{self.retry_after_s:g}"})
                return True
            if action in ("500", "503", "400"):
                await self._send(writer, int(action), {"error": {"message": f"injected {action}"}})
                return True
            if action == "echo_auth_400":
                await self._send(writer, 400, {"error": {"message": "bad key " + headers.get("authorization", "")}})
                return True
            if action == "garbage":
                await self._send_raw(writer, 200, b"<html>not json</html>", "text/html")
                return True
            system = next((m.get("content") for m in body.get("messages", []) if m.get("role") == "system"), "")
            if isinstance(system, str) and "grading a description" in system:
                content = json.dumps(self.judge_scores)
            elif action == "malformed_always":
                content = f"I cannot format this as JSON (tag={tag})."
            elif action == "malformed" and not is_repair:
                content = f"A computed tomography image (tag={tag}). {{'modality': broken"
            elif is_repair:
                content = json.dumps(json.loads(good_reply(tag).split("```json\n", 1)[1].split("\n```")[0]))
            else:
                content = good_reply(tag)
            with self._lock:
                self.stats.tags[tag] += 1
            reply = {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": len(content) // 4},
            }
            await self._send(writer, 200, reply)
            return True
        finally:
            with self._lock:
                self.stats.in_flight -= 1

    async def _send(self, writer, status: int, obj: dict, extra: dict | None = None) -> None:
        await self._send_raw(writer, status, json.dumps(obj).encode(), "application/json", extra)

    async def _send_raw(self, writer, status: int, data: bytes, ctype: str, extra: dict | None = None) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Status")
        hdrs = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", f"Content-Length: {len(data)}",
                "Connection: keep-alive"]
        for k, v in (extra or {}).items():
            hdrs.append(f"{k}: {v}")
        writer.write(("\r\n".join(hdrs) + "\r\n\r\n").encode("latin-1") + data)
        await writer.drain()


def main() -> None:  # pragma: no cover - manual use: python -m medtrinity_assets_tests.chat_server
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rates", default="{}", help='JSON, e.g. {"429": 0.1, "drop": 0.05}')
    args = ap.parse_args()
    with ChatServer(latency_s=args.latency, rates=json.loads(args.rates)) as srv:
        print(srv.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
