"""A fake OpenAI-compatible upstream on a loopback port that records requests and misbehaves on cue."""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import orjson
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

if TYPE_CHECKING:
    from .fake_store import FakeStore


@dataclass
class Cue:
    """What the fake does with the next request.

    mode: json | slow_json | stream | status | stall | stall_after | cut | malformed | malformed_event | no_done |
          error_event. slow_json sends the head and half the body, then the rest `interval` seconds later.
    Every endpoint follows cues: fake_wire.py says how each mode applies to the ones besides chat.
    """

    mode: str = "json"
    status: int = 200
    body: Optional[bytes] = None
    headers: dict[str, str] = field(default_factory=dict)
    events: int = 3
    interval: float = 0.0
    delay: float = 0.0
    text: str = "hello"
    after: int = 0  # for cut / stall_after / malformed_event / error_event: which event misbehaves
    chunked_bytes: Optional[int] = None  # split each event's bytes into writes of this size


@dataclass
class Seen:
    """One request as the fake received it."""

    path: str
    headers: dict[str, str]
    body: bytes
    connection: int = 0  # which client connection carried it (to see keep-alive reuse)
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


def completion(model: str, text: str, n: int = 1, usage: bool = True) -> dict[str, Any]:
    """A non-streaming chat completion in OpenAI's shape."""
    body: dict[str, Any] = {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"} for i in range(n)],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 5, "completion_tokens": 7 * n, "total_tokens": 5 + 7 * n}
    return body


def chunk(model: str, delta: dict[str, Any], n: int = 1, finish: Optional[str] = None, **extra: Any) -> bytes:
    """One SSE event carrying a chat.completion.chunk."""
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish} for i in range(n)],
            **extra}
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def follow_common_cue(handler: Any, cue: Cue) -> bool:
    """What every endpoint does with a cue's delay, headers, stall and status; True if that was the answer."""
    if cue.delay:
        await asyncio.sleep(cue.delay)
    for name, value in cue.headers.items():
        handler.set_header(name, value)
    if cue.mode == "stall":
        await handler.closed.wait()
        return True
    if cue.mode == "status":
        handler.set_status(cue.status)
        handler.set_header("Content-Type", "application/json")
        handler.finish(cue.body if cue.body is not None else orjson.dumps(
            {"error": {"message": f"fake error {cue.status}", "type": "server_error", "param": None,
                       "code": None}}))
        return True
    return False


class ChatHandler(RequestHandler):
    """POST /v1/chat/completions following the fake's current cue."""

    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.closed = asyncio.Event()

    def on_connection_close(self) -> None:
        self.fake.connections_closed_early += 1
        self.closed.set()

    async def post(self) -> None:
        fake = self.fake
        fake.requests.append(Seen(self.request.path, dict(self.request.headers), self.request.body,
                                  id(self.request.connection.stream)))  # type: ignore[attr-defined]
        if not fake.admit(self):
            return
        if fake.valid_keys is not None and self.request.headers.get("Authorization", "")[7:] not in fake.valid_keys:
            self.set_status(401)
            self.set_header("Content-Type", "application/json")
            self.finish(orjson.dumps({"error": {"message": "Incorrect API key provided",
                                                "type": "invalid_request_error", "param": None,
                                                "code": "invalid_api_key"}}))
            return
        payload = orjson.loads(self.request.body) if self.request.body else {}
        model = payload.get("model", "unknown")
        cue = fake.model_cues.get(model) or fake.next_cue()
        n = int(payload.get("n") or 1)  # 2.0 is an integer to OpenAI, as to the gateway's validation
        if await follow_common_cue(self, cue):
            return
        if cue.mode == "malformed":
            self.set_header("Content-Type", "application/json")
            self.finish(b'{"id": "chatcmpl-fake", "choices": [')
            return
        if cue.mode == "slow_json":
            self.set_header("Content-Type", "application/json")
            data = orjson.dumps(completion(model, cue.text, n))
            self.write(data[:len(data) // 2])
            await self.flush()
            await asyncio.sleep(cue.interval)
            self.finish(data[len(data) // 2:])
            return
        if cue.mode == "json" or not payload.get("stream"):
            self.set_header("Content-Type", "application/json")
            self.finish(cue.body if cue.body is not None else orjson.dumps(completion(model, cue.text, n)))
            return
        with contextlib.suppress(StreamClosedError):  # the gateway hung up: what some tests want
            await self._stream(cue, model, n, payload)

    async def _write(self, data: bytes, cue: Cue) -> None:
        if cue.chunked_bytes:
            for start in range(0, len(data), cue.chunked_bytes):
                self.write(data[start:start + cue.chunked_bytes])
                await self.flush()
        else:
            self.write(data)
            await self.flush()

    async def _stream(self, cue: Cue, model: str, n: int, payload: dict[str, Any]) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        await self._write(chunk(model, {"role": "assistant", "content": ""}, n), cue)
        for index in range(cue.events):
            if cue.interval:
                await asyncio.sleep(cue.interval)
            if cue.mode == "cut" and index == cue.after:
                self.request.connection.stream.close()  # type: ignore[attr-defined]
                return
            if cue.mode == "stall_after" and index == cue.after:
                await self.closed.wait()
                return
            if cue.mode == "malformed_event" and index == cue.after:
                await self._write(b'data: {"id": "chatcmpl-fake", "choices": [\n\n', cue)
                continue
            if cue.mode == "error_event" and index == cue.after:
                await self._write(b'data: {"error": {"message": "upstream exploded", "type": "server_error"}}\n\n',
                                  cue)
                self.finish()
                return
            await self._write(chunk(model, {"content": f"{cue.text}{index} "}, n), cue)
        await self._write(chunk(model, {}, n, finish="stop"), cue)
        if (payload.get("stream_options") or {}).get("include_usage"):
            await self._write(chunk(model, {}, 0, usage={"prompt_tokens": 5, "completion_tokens": cue.events,
                                                          "total_tokens": 5 + cue.events}), cue)
        if cue.mode != "no_done":
            await self._write(b"data: [DONE]\n\n", cue)
        self.finish()


class ModelsHandler(RequestHandler):
    """GET /v1/models."""

    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake

    def get(self) -> None:
        self.fake.requests.append(Seen(self.request.path, dict(self.request.headers), b""))
        self.set_header("Content-Type", "application/json")
        if self.fake.models_status != 200:
            self.set_status(self.fake.models_status)
            self.finish(b'{"error": {"message": "models are unavailable", "type": "server_error"}}')
            return
        self.finish(orjson.dumps({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in self.fake.model_ids]}))


class CountingServer(HTTPServer):
    """Tornado's HTTPServer, counting the client connections open now."""

    open_connections = 0

    def handle_stream(self, stream: Any, address: Any) -> None:
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: Any) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)


class FakeUpstream:
    """One fake upstream server; start it inside the event loop with `start()`."""

    def __init__(self, name: str = "fake", model_ids: tuple[str, ...] = ("fake-model",)) -> None:
        self.name = name
        self.model_ids = model_ids
        self.requests: list[Seen] = []
        self.cues: list[Cue] = []
        self.default = Cue()
        self.model_cues: dict[str, Cue] = {}  # how requests for these models are always answered
        self.valid_keys: Optional[set[str]] = None  # when set, other keys get 401
        self.models_status = 200  # what GET /v1/models answers
        self.connections_closed_early = 0
        self.port = 0
        # Rate limit enforced like OpenAI does: a token bucket of `rpm` with `burst`, 429 beyond it.
        self.rpm: Optional[float] = None
        self.burst = 1.0
        self._level = 0.0
        self._updated = 0.0
        self.rejected = 0
        self.accepted_at: list[float] = []
        self._server: Optional[CountingServer] = None
        from .fake_store import FakeStore  # the other endpoints' modules import this one
        self.store: FakeStore = FakeStore()  # this fake's stored responses and conversations (one OpenAI project)

    def limit(self, rpm: float, burst: float) -> None:
        """Enforce `rpm` (with `burst`) from now on."""
        self.rpm, self.burst = rpm, burst
        self._level, self._updated = burst, time.monotonic()

    def admit(self, handler: RequestHandler) -> bool:
        """Apply the rate limit: False (after answering 429) when it is exceeded."""
        if self.rpm is None:
            return True
        now = time.monotonic()
        rate = self.rpm / 60
        self._level = min(self.burst, self._level + (now - self._updated) * rate)
        self._updated = now
        if self._level >= 1:
            self._level -= 1
            self.accepted_at.append(now)
            handler.set_header("x-ratelimit-limit-requests", str(int(self.rpm)))
            handler.set_header("x-ratelimit-remaining-requests", str(int(self._level)))
            return True
        self.rejected += 1
        wait = (1 - self._level) / rate
        handler.set_status(429)
        handler.set_header("Retry-After", str(max(1, math.ceil(wait))))
        handler.set_header("x-ratelimit-remaining-requests", "0")
        handler.set_header("x-ratelimit-reset-requests", f"{wait:.3f}s")
        handler.set_header("Content-Type", "application/json")
        handler.finish(orjson.dumps({"error": {"message": "Rate limit reached for requests", "type": "requests",
                                               "param": None, "code": "rate_limit_exceeded"}}))
        return False

    def next_cue(self) -> Cue:
        return self.cues.pop(0) if self.cues else self.default

    def cue(self, *cues: Cue) -> None:
        """Queue one-shot behaviours, used before the default."""
        self.cues.extend(cues)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[Seen]:
        return [seen for seen in self.requests if seen.path.endswith("/chat/completions")]

    @property
    def model_requests(self) -> list[Seen]:
        return [seen for seen in self.requests if seen.path.endswith("/models")]

    @property
    def open_connections(self) -> int:
        """Connections from the gateway open now (its pool keeps them alive between requests)."""
        return self._server.open_connections if self._server is not None else 0

    def requests_to(self, path_suffix: str) -> list[Seen]:
        """The requests whose path (without its query) ends with `path_suffix`, e.g. "/embeddings"."""
        return [seen for seen in self.requests if seen.path.split("?", 1)[0].endswith(path_suffix)]

    @property
    def response_ids(self) -> list[str]:
        """Ids of the responses this fake stores (GET /v1/responses/{id} finds them here only)."""
        return list(self.store.responses)

    @property
    def conversation_ids(self) -> list[str]:
        """Ids of this fake's conversations."""
        return list(self.store.conversations)

    def start(self, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        from .fake_endpoints import fallback_routes, routes  # every other endpoint (fake_endpoints.py)
        app = Application([
            (r"/v1/chat/completions", ChatHandler, {"fake": self}),
            (r"/v1/models", ModelsHandler, {"fake": self}),
            *routes(self),
            *fallback_routes(self),
        ], log_function=lambda handler: None)
        sock, self.port = bind_unused_port()
        self._server = CountingServer(app, ssl_options=ssl_context)
        self._server.add_sockets([sock])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None
