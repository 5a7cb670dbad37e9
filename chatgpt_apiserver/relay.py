"""Getting an answer: try controllers in the balancer's order until one replies, before any byte is sent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

import orjson

from .controllers import Call, Controller, Reply, UpstreamError
from .controllers.base import retry_after_seconds
from .errors import ApiError
from .gateway import Gateway
from .secret import scrub
from .sse import DONE, EventSplitter, MalformedEvent, event_data, read_event

log = logging.getLogger("chatgpt_apiserver.relay")

# Statuses that say "this controller cannot answer now": try another one.
RETRY_ELSEWHERE = frozenset((401, 403, 408, 429))


@dataclass
class Failure:
    """One failed attempt, for the log and the final error message."""

    controller: str
    kind: str  # connection, timeout, protocol, 429, auth, 5xx, upstream_error
    message: str
    retry_after: Optional[float] = None


@dataclass
class Answer:
    """A usable upstream reply: a whole body, or a stream whose first events are in hand."""

    controller: Controller
    reply: Reply
    status: int
    body: bytes = b""
    first_events: list[bytes] = field(default_factory=list)
    splitter: Optional[EventSplitter] = None
    attempts: int = 1
    failures: list[Failure] = field(default_factory=list)


def _kind_of_status(status: int) -> str:
    if status == 429:
        return "429"
    if status in (401, 403):
        return "auth"
    if status == 408:
        return "timeout"
    return "5xx"


def client_error_body(body: bytes, status: int, secrets: tuple[bytes, ...]) -> bytes:
    """An upstream's 4xx body for the client: its own error JSON, scrubbed, or that text wrapped in OpenAI's shape."""
    body = scrub(body, secrets)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return body
    text = body.decode("utf-8", "replace").strip()[:1000] or f"the upstream answered {status}"
    return ApiError(status, text).body()


async def _first_events(reply: Reply) -> tuple[list[bytes], EventSplitter]:
    """Read until the first data event; an upstream that fails before it can still be replaced."""
    splitter = EventSplitter()
    events: list[bytes] = []
    while True:
        chunk = await reply.read_chunk()
        if not chunk:
            raise UpstreamError("protocol", "the upstream ended the stream before sending any event")
        fresh = splitter.feed(chunk)
        events.extend(fresh)
        for event in fresh:
            data = event_data(event)
            if data is None:
                continue  # a comment or keep-alive: relay it, keep reading
            if data == DONE:
                raise UpstreamError("protocol", "the upstream ended the stream before sending any data")
            try:
                parsed = read_event(data)
            except MalformedEvent as exc:
                raise UpstreamError("protocol", str(exc)) from None
            if "error" in parsed:
                raise UpstreamError("upstream_error", "the upstream sent an error event")
            # The rest of this batch is checked as it is relayed.
            return events, splitter


class Deadline:
    """Cancels the current task at a point in time; cheaper than `asyncio.timeout` on the hot path."""

    __slots__ = ("_handle", "expired", "loop", "task")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self._handle: Optional[asyncio.TimerHandle] = None
        self.expired = False

    def at(self, when: float) -> None:
        """Fire at loop time `when` (replacing any earlier setting)."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.loop.call_at(when, self._fire)

    def clear(self) -> None:
        """Do not fire."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self.expired = True
        self.task.cancel()


async def _attempt(controller: Controller, call: Call, gateway: Gateway) -> Answer | Failure:
    """One attempt on one controller."""
    settings = gateway.settings
    deadline = Deadline()
    started = deadline.loop.time()
    deadline.at(started + settings.first_byte_timeout)
    reply: Optional[Reply] = None
    try:
        reply = await controller.send(call)
        status = reply.status
        if status == 200 and call.stream and reply.content_type.startswith("text/event-stream"):
            deadline.clear()  # from here the stream idle timeout applies
            events, splitter = await _first_events(reply)
            return Answer(controller, reply, status, first_events=events, splitter=splitter)
        deadline.at(started + settings.request_timeout)
        body = await reply.read()
        deadline.clear()
        if status in RETRY_ELSEWHERE or status >= 500:
            reply.close()
            retry_after = retry_after_seconds(reply.headers.get("Retry-After")) if status == 429 else None
            snippet = scrub(body[:300], gateway.secrets).decode("utf-8", "replace")
            log.info("controller %s answered %d: %s", controller.name, status, snippet)
            return Failure(controller.name, _kind_of_status(status), f"upstream answered {status}", retry_after)
        if 200 <= status < 300:
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                reply.close()
                return Failure(controller.name, "protocol", "the upstream answered with malformed JSON")
        return Answer(controller, reply, status, body=body)
    except UpstreamError as exc:
        if reply is not None:
            reply.close()
        return Failure(controller.name, exc.kind, exc.message)
    except asyncio.CancelledError:
        if reply is not None:
            reply.close()
        if not deadline.expired:
            raise
        deadline.task.uncancel()
        what = "response headers" if reply is None else "the response"
        return Failure(controller.name, "timeout", f"timed out waiting for {what}")
    except BaseException:
        if reply is not None:
            reply.close()
        raise
    finally:
        deadline.clear()


def _give_up(failures: list[Failure], model: str) -> ApiError:
    """The client's error once no attempt produced an answer."""
    summary = "; ".join(f"{f.controller}: {f.message}" for f in failures)
    kinds = {f.kind for f in failures}
    if kinds == {"429"}:
        waits = [f.retry_after for f in failures if f.retry_after is not None]
        wait = max(1, int(min(waits) + 0.999)) if waits else 1
        return ApiError(429, f"Every controller for model {model!r} is rate limited upstream ({summary}).",
                        code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
    if kinds == {"timeout"}:
        return ApiError(504, f"The upstream did not answer in time ({summary}).", code="upstream_timeout")
    if kinds == {"protocol"}:
        return ApiError(502, f"The upstream sent an invalid response ({summary}).", code="bad_upstream_response")
    return ApiError(500, f"No controller could answer the request ({summary}).", code="upstream_unavailable")


async def open_answer(gateway: Gateway, call: Call) -> Answer:
    """Try controllers until one gives a usable reply; raise `ApiError` when none can."""
    if not gateway.serves(call.model):
        raise ApiError(404, f"The model {call.model!r} is not served by this gateway.",
                       param="model", code="model_not_found")
    tried: list[Controller] = []
    failures: list[Failure] = []
    for _ in range(gateway.settings.max_attempts):
        controller = gateway.pick(call.model, tried)
        if controller is None:
            break
        tried.append(controller)
        outcome = await _attempt(controller, call, gateway)
        if isinstance(outcome, Answer):
            outcome.attempts = len(tried)
            outcome.failures = failures
            return outcome
        failures.append(outcome)
        log.warning("attempt %d on controller %s failed (%s): %s; request %s",
                    len(tried), outcome.controller, outcome.kind, outcome.message, call.request_id)
    raise _give_up(failures, call.model)


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Upstream headers worth passing on: none that are hop-by-hop, cookies or rate-limit internals."""
    keep = {}
    for name in ("openai-processing-ms", "openai-version"):
        value = headers.get(name)
        if value is not None:
            keep[name] = value
    return keep
