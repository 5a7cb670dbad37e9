"""Getting an answer: try controllers until one replies, all before any byte is sent to the client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from ..call import Call
from ..controllers import Controller
from ..errors import ApiError
from ..gateway import Gateway
from ..scheduling.outcomes import (
    controller_fault,
    fault_kind,
    rate_headers,
    record_failure,
    record_status,
    record_usage,
    usage_of,
)
from ..scheduling.scheduler import Lease
from ..secret import scrub
from ..transport.reply import Reply, UpstreamError
from .rewrite import estimate_tokens, upstream_body
from .sse import DONE, EventSplitter, MalformedEvent, event_data, read_event

log = logging.getLogger("chatgpt_apiserver.relay")


@dataclass
class Failure:
    """One failed attempt, for the log and the final error message."""

    controller: str
    kind: str  # connection, timeout, protocol, 429, quota, auth, 5xx, upstream_error
    message: str
    retry_after: Optional[float] = None


@dataclass
class Answer:
    """A usable upstream reply: a whole body, or a stream whose first events are in hand."""

    controller: Controller
    reply: Reply
    status: int
    lease: Lease
    body: bytes = b""
    first_events: list[bytes] = field(default_factory=list)
    splitter: Optional[EventSplitter] = None
    attempts: int = 1
    usage: Optional[dict[str, Any]] = None

    def close(self) -> None:
        """Abandon the answer: close the upstream reply and end the lease."""
        self.reply.close()
        self.lease.release(None)


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


async def _first_events(reply: Reply, max_event_size: int) -> tuple[list[bytes], EventSplitter]:
    """Read until the first data event; an upstream that fails before it can still be replaced."""
    splitter = EventSplitter(max_event_size)
    events: list[bytes] = []
    held = 0  # comments held until the first data event: bounded like one event
    while True:
        chunk = await reply.read_chunk()
        if not chunk:
            raise UpstreamError("protocol", "the upstream ended the stream before sending any event")
        try:
            fresh = splitter.feed(chunk)
        except MalformedEvent as exc:
            raise UpstreamError("protocol", str(exc)) from None
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
        held += len(chunk)
        if held > max_event_size:
            raise UpstreamError("protocol", f"the upstream sent over max_event_size ({max_event_size} bytes) "
                                            "before its first event")


class Deadline:
    """Cancels the current task at a point in time; cheaper than `asyncio.timeout` on the hot path.

    Moving the deadline later keeps the armed timer, which re-arms itself when it fires early: an
    attempt moves it once per reply, and one timer per attempt is cheaper than two.
    """

    __slots__ = ("_armed", "_handle", "_when", "expired", "loop", "task")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self._handle: Optional[asyncio.TimerHandle] = None
        self._armed = 0.0  # when the timer fires
        self._when = 0.0  # when the deadline is
        self.expired = False

    def at(self, when: float) -> None:
        """Fire at loop time `when` (replacing any earlier setting)."""
        self._when = when
        if self._handle is not None:
            if self._armed <= when:
                return
            self._handle.cancel()
        self._arm(when)

    def _arm(self, when: float) -> None:
        self._armed = when
        self._handle = self.loop.call_at(when, self._fire)

    def clear(self) -> None:
        """Do not fire."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        if self._when > self._armed:
            self._arm(self._when)  # the deadline moved on since the timer was set
            return
        self._handle = None
        self.expired = True
        self.task.cancel()


async def _attempt(lease: Lease, call: Call, gateway: Gateway) -> Answer | Failure:
    """One attempt on the leased controller; its state learns from the outcome."""
    controller = lease.controller
    settings = gateway.settings
    deadline = Deadline()
    started = deadline.loop.time()
    first_byte = settings.first_byte_timeout
    deadline.at(started + (first_byte if call.stream else min(first_byte, settings.request_timeout)))
    reply: Optional[Reply] = None
    handed_over = False  # an Answer owns its reply; every other way out closes it
    try:
        reply = await controller.send(call, upstream_body(call, controller.upstream_model(call.model)))
        status = reply.status
        rate = rate_headers(controller, status, reply.headers)
        if lease.shared:
            lease.succeeded = not controller_fault(status)
            lease.headers = rate
        if status == 200 and call.stream and reply.content_type.startswith("text/event-stream"):
            deadline.clear()  # from here the stream idle timeout applies
            events, splitter = await _first_events(reply, settings.max_event_size)
            record_status(controller, status, rate, b"", gateway.scheduler, settings, gateway.clock())
            handed_over = True
            return Answer(controller, reply, status, lease, first_events=events, splitter=splitter)
        deadline.at(started + settings.request_timeout)
        body = await reply.read()  # the last wait: nothing below can be cut short, and finally clears it
        if 200 <= status < 300:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                record_failure(controller, gateway.scheduler, gateway.clock())
                return Failure(controller.name, "protocol", "the upstream answered with malformed JSON")
            record_status(controller, status, rate, body, gateway.scheduler, settings, gateway.clock())
            usage = usage_of(document)
            lease.release(record_usage(controller, usage, call.model))
            handed_over = True
            return Answer(controller, reply, status, lease, body=body, usage=usage)
        record_status(controller, status, rate, body, gateway.scheduler, settings, gateway.clock())
        if controller_fault(status):
            kind = fault_kind(status, body)
            retry_after = rate.cooldown() if status == 429 and rate is not None else None
            snippet = scrub(body[:300], gateway.secrets).decode("utf-8", "replace")
            log.info("controller %s answered %d: %s", controller.name, status, snippet)
            return Failure(controller.name, kind, f"upstream answered {status}", retry_after)
        lease.release(0)
        handed_over = True
        return Answer(controller, reply, status, lease, body=body)
    except UpstreamError as exc:
        record_failure(controller, gateway.scheduler, gateway.clock())
        return Failure(controller.name, exc.kind, exc.message)
    except asyncio.CancelledError:
        if not deadline.expired:
            raise
        deadline.task.uncancel()
        record_failure(controller, gateway.scheduler, gateway.clock())
        what = "response headers" if reply is None else "the response"
        return Failure(controller.name, "timeout", f"timed out waiting for {what}")
    finally:
        deadline.clear()
        if reply is not None and not handed_over:
            reply.close()


def _give_up(failures: list[Failure], model: str) -> ApiError:
    """The client's error once no attempt produced an answer."""
    summary = "; ".join(f"{f.controller}: {f.message}" for f in failures) or "no attempt was possible"
    kinds = {f.kind for f in failures}
    if kinds and kinds <= {"429", "quota"}:
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
    scheduler = gateway.scheduler
    serving = scheduler.serving(call.model)
    if not serving:
        raise ApiError(404, f"The model {call.model!r} is not served by this gateway.",
                       param="model", code="model_not_found")
    tokens = estimate_tokens(call, gateway.settings.default_completion_tokens)
    gateway.retries.deposit()
    excluded: list[Controller] = []  # failed for reasons a cooldown does not cover
    failures: list[Failure] = []
    for attempt in range(gateway.settings.max_attempts):
        if len(excluded) == len(serving):
            break
        if attempt and not gateway.retries.withdraw():
            log.warning("retry budget exhausted; request %s gives up after %d attempt(s)", call.request_id, attempt)
            break
        try:
            lease = await scheduler.acquire(call.model, tokens, excluded)
        except ApiError:
            if failures:
                break  # report what the attempts met, not the queue
            raise
        try:
            outcome = await _attempt(lease, call, gateway)
        except BaseException:
            lease.release(None)  # the client went away: keep the reservation, the upstream may count it
            raise
        counters = lease.controller.state.counters
        if attempt:
            counters.retries += 1
        if isinstance(outcome, Answer):
            counters.outcome("ok" if outcome.status < 400 else "client_error")
            outcome.attempts = attempt + 1
            return outcome
        counters.outcome(outcome.kind)
        lease.release(0)
        failures.append(outcome)
        if outcome.kind != "429":
            excluded.append(lease.controller)  # a 429 cools the controller; it may serve again after
        log.warning("attempt %d on controller %s failed (%s): %s; request %s",
                    attempt + 1, outcome.controller, outcome.kind, outcome.message, call.request_id)
    raise _give_up(failures, call.model)


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Upstream headers worth passing on: none that are hop-by-hop, cookies or rate-limit internals."""
    keep = {}
    for name in ("openai-processing-ms", "openai-version"):
        value = headers.get(name)
        if value is not None:
            keep[name] = value
    return keep
