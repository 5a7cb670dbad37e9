"""Getting an answer: try controllers until one replies, all before any byte is sent to the client."""

from __future__ import annotations

import asyncio
import logging
import math
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
    record_success,
    record_usage,
    usage_of,
)
from ..scheduling.scheduler import Lease, Scheduler
from ..secret import redacted_snippet, scrub
from ..state.store import UNAVAILABLE
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
    sent: bool = False  # a timeout after the whole request went out: the upstream may still be working on it


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
    scheduler: Optional[Scheduler] = None  # to count a failure that comes after the answer began

    def close(self) -> None:
        """Abandon the answer: close the upstream reply and end the lease."""
        self.reply.close()
        self.lease.release(None)

    def completed(self) -> None:
        """A stream ended well: a success for the controller and model."""
        if self.scheduler is not None:
            record_success(self.lease, self.scheduler)

    def failed(self) -> None:
        """The upstream failed after the answer began (mid-stream): count it against the controller and model."""
        if self.scheduler is not None:
            self.lease.controller.stats.outcome("stream_failed")
            record_failure(self.lease, self.scheduler)


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
    # A stream's headers come at once; a non-streamed answer's come when it is complete, so only the
    # request timeout bounds it (a slow reasoning model is not a dead upstream).
    deadline.at(started + (settings.first_byte_timeout if call.stream else settings.request_timeout))
    reply: Optional[Reply] = None
    handed_over = False  # an Answer owns its reply; every other way out closes it
    try:
        reply = await controller.send(call, upstream_body(call, controller.upstream_model(call.model)))
        status = reply.status
        rate = rate_headers(controller, status, reply.headers)
        if status == 200 and call.stream and reply.content_type.startswith("text/event-stream"):
            deadline.clear()  # from here the stream idle timeout applies
            events, splitter = await _first_events(reply, settings.max_event_size)
            record_status(lease, status, rate, b"", gateway.scheduler, settings, complete=False)
            handed_over = True
            return Answer(controller, reply, status, lease, first_events=events, splitter=splitter,
                          scheduler=gateway.scheduler)
        deadline.at(started + settings.request_timeout)
        body = await reply.read()  # the last wait: nothing below can be cut short, and finally clears it
        if 200 <= status < 300:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                record_failure(lease, gateway.scheduler)
                return Failure(controller.name, "protocol", "the upstream answered with malformed JSON")
            record_status(lease, status, rate, body, gateway.scheduler, settings)
            usage = usage_of(document)
            lease.release(record_usage(controller, usage, call.model))
            handed_over = True
            return Answer(controller, reply, status, lease, body=body, usage=usage)
        record_status(lease, status, rate, body, gateway.scheduler, settings)
        if controller_fault(status):
            kind = fault_kind(status, body)
            retry_after = rate.cooldown() if status == 429 and rate is not None else None
            snippet = redacted_snippet(body, gateway.secrets, 300)
            log.info("controller %s answered %d: %s", controller.name, status, snippet)
            return Failure(controller.name, kind, f"upstream answered {status}", retry_after)
        lease.release(0)
        handed_over = True
        return Answer(controller, reply, status, lease, body=body)
    except UpstreamError as exc:
        record_failure(lease, gateway.scheduler, whole=exc.connecting)
        return Failure(controller.name, exc.kind, exc.message, sent=exc.kind == "timeout" and not exc.connecting)
    except asyncio.CancelledError:
        if not deadline.expired:
            raise
        deadline.task.uncancel()
        record_failure(lease, gateway.scheduler)
        what = "response headers" if reply is None else "the response"
        return Failure(controller.name, "timeout", f"timed out waiting for {what}", sent=True)
    finally:
        deadline.clear()
        if reply is not None and not handed_over:
            reply.close()


def _give_up(failures: list[Failure], call: Call, gateway: Gateway, final: bool) -> ApiError:
    """The client's error once no attempt produced an answer.

    `final`: the gateway tried every candidate, or must not resend: the SDKs are told not to retry
    (`x-should-retry: false`). `Retry-After` says when a cooldown or an ejection ends.
    """
    summary = "; ".join(f"{f.controller}: {f.message}" for f in failures) or "no attempt was possible"
    kinds = {f.kind for f in failures}
    headers = {"x-should-retry": "false"} if final else {}
    wait = _earliest_return(gateway, call.model, failures)
    if wait is not None:
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    model = call.model
    if kinds and kinds <= {"429", "quota"}:
        headers.setdefault("Retry-After", "1")
        return ApiError(429, f"Every controller for model {model!r} is rate limited upstream ({summary}).",
                        code="rate_limit_exceeded", headers=headers)
    if kinds == {"timeout"}:
        return ApiError(504, f"The upstream did not answer in time ({summary}).", code="upstream_timeout",
                        headers=headers)
    if kinds == {"protocol"}:
        return ApiError(502, f"The upstream sent an invalid response ({summary}).", code="bad_upstream_response",
                        headers=headers)
    return ApiError(500, f"No controller could answer the request ({summary}).", code="upstream_unavailable",
                    headers=headers)


def _tried_all(gateway: Gateway, model: str, serving: list[Controller], failures: list[Failure]) -> bool:
    """Every controller for `model` was tried, or cannot be (ejected or disabled): a retry would not help."""
    tried = {failure.controller for failure in failures}
    store = gateway.store
    return all(c.name in tried or store.health(c, model).status in UNAVAILABLE for c in serving)


def _earliest_return(gateway: Gateway, model: str, failures: list[Failure]) -> Optional[float]:
    """Seconds until a controller for `model` that is cooling down or ejected may serve again, if one is."""
    waits = [f.retry_after for f in failures if f.retry_after is not None]
    store = gateway.store
    for controller in gateway.scheduler.serving(model):
        health = store.health(controller, model)
        if health.status in ("cooling", "ejected") and math.isfinite(health.wait):
            waits.append(health.wait)
    return min(waits) if waits else None


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
        stats = lease.controller.stats
        if attempt:
            stats.retries += 1
        if isinstance(outcome, Answer):
            stats.outcome("ok" if outcome.status < 400 else "client_error")
            outcome.attempts = attempt + 1
            return outcome
        stats.outcome(outcome.kind)
        lease.release(0)
        failures.append(outcome)
        if outcome.kind != "429":
            excluded.append(lease.controller)  # a 429 cools the controller; it may serve again after
        log.warning("attempt %d on controller %s failed (%s): %s; request %s",
                    attempt + 1, outcome.controller, outcome.kind, outcome.message, call.request_id)
        if outcome.sent and not gateway.settings.retry_on_timeout:
            # The upstream may still be working on it, and billing it: do not send it again, here or by the SDK.
            raise _give_up(failures, call, gateway, final=True)
    raise _give_up(failures, call, gateway, final=_tried_all(gateway, call.model, serving, failures))


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Upstream headers worth passing on: none that are hop-by-hop, cookies or rate-limit internals."""
    keep = {}
    for name in ("openai-processing-ms", "openai-version"):
        value = headers.get(name)
        if value is not None:
            keep[name] = value
    return keep
