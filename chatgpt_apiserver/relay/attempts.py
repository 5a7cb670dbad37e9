"""One attempt on one controller, until an answer is in hand or the attempt has failed (routing.py tries the
next one)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from ..call import Call
from ..controllers import Controller, Verdict
from ..endpoints.usage import Usage, find_usage_in
from ..errors import ApiError
from ..gateway import Gateway
from ..scheduling.outcomes import (
    fault_kind,
    rate_headers,
    record_failure,
    record_status,
    record_success,
    record_usage,
)
from ..scheduling.scheduler import Lease, Scheduler
from ..secret import redacted_snippet, scrub
from ..transport.reply import Piece, Reply, UpstreamError, joined
from .rewrite import upstream_body
from .sse import DONE, EventSplitter, MalformedEvent, event_data, read_event

log = logging.getLogger("chatgpt_apiserver.relay")

ERROR_TYPES = frozenset(("error", "response.failed"))  # typed events that end an answer in failure


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
    """A usable upstream reply: a whole body, a stream whose first events are in hand, or the first bytes of a
    binary answer."""

    controller: Controller
    reply: Reply
    status: int
    lease: Lease
    body: bytes = b""  # a whole answer that is not a 2xx (small): relayed after scrubbing
    pieces: list[Piece] = field(default_factory=list)  # a whole 2xx answer, as the pieces it came in
    first_events: list[bytes] = field(default_factory=list)
    splitter: Optional[EventSplitter] = None
    attempts: int = 1
    usage: Optional[Usage] = None
    scheduler: Optional[Scheduler] = None  # to count a failure that comes after the answer began
    binary: bool = False  # relayed as it arrives, never parsed (audio): `first_events` holds its first bytes
    created: Optional[str] = None  # the stored response or conversation this answer made (its id)

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


async def _first_events(reply: Reply, max_event_size: int) -> tuple[list[bytes], EventSplitter, dict[str, Any]]:
    """Read until the first data event (returned parsed too); an upstream that fails before it can still be
    replaced."""
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
            if is_error_event(parsed):
                raise UpstreamError("upstream_error", "the upstream sent an error event")
            # The rest of this batch is checked as it is relayed.
            return events, splitter, parsed
        held += len(chunk)
        if held > max_event_size:
            raise UpstreamError("protocol", f"the upstream sent over max_event_size ({max_event_size} bytes) "
                                            "before its first event")


def is_error_event(parsed: dict[str, Any]) -> bool:
    """An event that says the answer failed: chat's `{"error": ...}`, or a typed `error` / `response.failed`."""
    kind = parsed.get("type")
    return kind in ERROR_TYPES if kind is not None else "error" in parsed


def created_id(prefix: Optional[str], document: Any) -> Optional[str]:
    """The id of the stored response or conversation an answer (or a stream's first event) made."""
    if prefix is None or not isinstance(document, dict):
        return None
    inner = document.get("response")
    ident = inner.get("id") if isinstance(inner, dict) else document.get("id")
    return ident if isinstance(ident, str) and ident.startswith(prefix) else None


def _looks_like_json(pieces: list[Piece]) -> bool:
    """A whole JSON object, judged by its ends: parsing a 2 MB answer to check it would cost the hot path."""
    if not pieces:
        return False
    start, end = pieces[0][:64].lstrip()[:1], pieces[-1][-64:].rstrip()[-1:]
    return (start, end) in ((b"{", b"}"), (b"[", b"]"))


class Deadline:
    """Cancels the current task at a point in time; cheaper than `asyncio.timeout` on the hot path.

    Moving the deadline later keeps the armed timer, which re-arms itself when it fires early: an
    attempt moves it once per reply, and one timer per attempt is cheaper than two.
    """

    __slots__ = ("_armed", "_handle", "_when", "expired", "loop", "task")

    def __init__(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)  # (given the loop: not asked for it again, a system call on 3.11)
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


async def attempt(lease: Lease, call: Call, gateway: Gateway) -> Answer | Failure:
    """One attempt on the leased controller; its state learns from the outcome."""
    controller = lease.controller
    settings = gateway.settings
    call.attempted = True
    call.tried = controller.name
    deadline = Deadline()
    started = deadline.loop.time()
    # A stream's headers come at once; a non-streamed answer's come when it is complete, so only the
    # request timeout bounds it (a slow reasoning model is not a dead upstream).
    deadline.at(started + (settings.first_byte_timeout if call.stream else settings.request_timeout))
    reply: Optional[Reply] = None
    handed_over = False  # an Answer owns its reply; every other way out closes it
    endpoint = call.endpoint
    kind = ""  # the reply's Content-Type, read once
    try:
        while True:
            body, injected = upstream_body(call, controller)
            reply = await controller.send(call, body)
            status = reply.status
            rate = rate_headers(controller, status, reply.headers)
            kind = reply.content_type
            if 200 <= status < 300 and kind[:9].lower() == "text/html":
                # No OpenAI endpoint answers with a web page: a maintenance page, a portal, a base_url that
                # names a web UI. Passed on, it would be a success the client cannot read.
                record_failure(lease, gateway.scheduler)
                return Failure(controller.name, "protocol", f"the upstream answered {status} with a web page")
            if 200 <= status < 300 and call.stream and kind.startswith("text/event-stream"):
                deadline.clear()  # from here the stream idle timeout applies
                events, splitter, first = await _first_events(reply, settings.max_event_size)
                record_status(lease, status, rate, b"", gateway.scheduler, settings, complete=False)
                handed_over = True
                return Answer(controller, reply, status, lease, first_events=events, splitter=splitter,
                              scheduler=gateway.scheduler, created=created_id(endpoint.creates, first))
            if 200 <= status < 300 and endpoint.binary and not kind.startswith("application/json"):
                deadline.clear()  # audio comes as it is made: the stream idle timeout applies between pieces
                piece = await reply.read_chunk()
                record_status(lease, status, rate, b"", gateway.scheduler, settings, complete=False)
                handed_over = True
                return Answer(controller, reply, status, lease, first_events=[piece] if piece else [],
                              scheduler=gateway.scheduler, binary=True)
            deadline.at(started + settings.request_timeout)
            pieces = await reply.read_pieces()
            if 200 <= status < 300 and endpoint.creates is None:
                break  # kept as the pieces it came in: a large answer is never copied into one
            data = joined(pieces)
            if status == 400 and injected and b"stream_options" in data:
                reply.close()
                controller.refuse_stream_usage()  # logged once; this request is sent again without it
                continue
            break
        if 200 <= status < 300:
            json = kind.startswith("application/json")
            created = None
            if endpoint.creates is not None:
                try:
                    created = created_id(endpoint.creates, orjson.loads(data))
                except orjson.JSONDecodeError:
                    if json:
                        record_failure(lease, gateway.scheduler)
                        return Failure(controller.name, "protocol", "the upstream answered with malformed JSON",
                                       sent=True)  # it made something: not made again elsewhere
                pieces = [data]
            elif json and not _looks_like_json(pieces):
                record_failure(lease, gateway.scheduler)
                return Failure(controller.name, "protocol", "the upstream answered with malformed JSON")
            record_status(lease, status, rate, b"", gateway.scheduler, settings)
            usage = find_usage_in(pieces) if json else None
            lease.release(0.0 if endpoint.shows_stored_usage else record_usage(controller, usage, call.label))
            handed_over = True
            return Answer(controller, reply, status, lease, pieces=pieces, usage=usage, created=created)
        verdict = record_status(lease, status, rate, data, gateway.scheduler, settings)
        if verdict is not Verdict.ANSWER:
            kind = fault_kind(status, data, verdict)
            retry_after = rate.cooldown() if status == 429 and rate is not None else None
            snippet = redacted_snippet(data, gateway.secrets, 300)
            log.info("controller %s answered %d: %s", controller.name, status, snippet)
            return Failure(controller.name, kind, f"upstream answered {status}", retry_after)
        lease.release(0)
        handed_over = True
        return Answer(controller, reply, status, lease, body=data)
    except UpstreamError as exc:
        record_failure(lease, gateway.scheduler, whole=exc.connecting)
        # A create whose whole answer had begun made its response or conversation upstream: sent again, it
        # would make (and bill) a second one. (A stream's head comes before the work: before its first event,
        # another controller may still take it.)
        made = endpoint.creates is not None and not call.stream and reply is not None and 200 <= reply.status < 300
        return Failure(controller.name, exc.kind, exc.message,
                       sent=(exc.kind == "timeout" and not exc.connecting) or made)
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
