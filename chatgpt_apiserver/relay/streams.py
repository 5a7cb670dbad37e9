"""Relaying a stream: the upstream's events as they arrive, ending well or in one error event; and binary
answers (audio) as their bytes arrive.

A stream of `data:` events (chat, completions) ends well with `data: [DONE]`; a typed stream (responses,
audio, images) with one of its endpoint's final events, then the end of the body. A stream that breaks
before that ends with one error event in the stream's own style, so a client can always tell.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Optional

from ..call import Call
from ..endpoints.base import Streams
from ..endpoints.usage import Usage, usage_of
from ..errors import stream_error_event, typed_error_event
from ..scheduling.outcomes import record_usage
from ..secret import scrub
from ..transport.reply import UpstreamError
from .attempts import Answer, is_error_event
from .sse import DONE, MalformedEvent, event_data, read_event

log = logging.getLogger("chatgpt_apiserver.streaming")

Send = Callable[[bytes, bool], Awaitable[None]]  # (bytes, whether they end the answer)


class BrokenAnswer(Exception):
    """A binary answer broke midway: the client's connection must close without the answer's end."""


@dataclass
class StreamResult:
    """How a relayed stream ended."""

    events: int = 0
    usage: Optional[Usage] = None
    failed: bool = False  # it ended in an error event


async def relay_stream(answer: Answer, call: Call, send: Send, secrets: tuple[bytes, ...] = (),
                       result: Optional[StreamResult] = None) -> StreamResult:
    """Send every upstream event as it arrives; on an upstream failure send the error event instead of the end.

    The events that one upstream read completes leave together, in one `send`: none waits for a later one.
    The final usage event settles the controller's token reservation; the gateway's own usage request is
    not relayed. `send` writes its bytes and awaits their flush, told whether they end the stream; it raises
    if the client has gone. `result`, if given, is filled in as the stream goes (its usage is known before
    the last `send`).
    """
    result = result if result is not None else StreamResult()
    reply = answer.reply
    splitter = answer.splitter
    assert splitter is not None
    typed = call.endpoint.streams is Streams.TYPED
    ends = call.endpoint.stream_ends
    pending = answer.first_events
    out: list[bytes] = []  # what this read's events put on the wire
    ended = False  # [DONE] came: the upstream's answer is over but for its last bytes
    finished = False  # a typed stream's final event came: the body's end is all that should follow
    try:
        while True:
            for event in pending:
                data = event_data(event)
                if data is not None:
                    if data == DONE:
                        answer.completed()
                        out.append(event)
                        result.events += 1
                        ended = True
                        await send(b"".join(out), True)
                        return result
                    parsed = read_event(data)
                    if is_error_event(parsed):
                        # Already in the upstream's error shape: pass it on (scrubbed) and end there.
                        out.append(scrub(event, secrets))
                        result.events += 1
                        await send(b"".join(out), True)
                        log.warning("controller %s sent an error event mid-stream", answer.controller.name)
                        answer.failed()
                        result.failed = True
                        return result
                    usage = usage_of(parsed)
                    if usage is not None:
                        result.usage = usage
                        if call.inject_usage and not typed and not parsed.get("choices"):
                            continue  # asked for by the gateway, not the client
                    if typed and parsed.get("type") in ends:
                        finished = True
                out.append(event)
                result.events += 1
            if out:
                await send(out[0] if len(out) == 1 else b"".join(out), False)
                out.clear()
            chunk = await reply.read_chunk()
            if not chunk:
                if splitter.pending.strip():
                    raise MalformedEvent("the upstream stream ended inside an event")
                if finished:
                    answer.completed()
                    await send(b"", True)
                    return result
                end = "its final event" if typed else "[DONE]"
                raise UpstreamError("protocol", f"the upstream stream ended without {end}")
            pending = splitter.feed(chunk)
    except (UpstreamError, MalformedEvent) as exc:
        kind = exc.kind if isinstance(exc, UpstreamError) else "protocol"
        message = "The upstream stream failed: " + (exc.message if isinstance(exc, UpstreamError) else str(exc))
        code = "upstream_timeout" if kind == "timeout" else "upstream_stream_error"
        log.warning("stream from controller %s failed after %d events: %s", answer.controller.name,
                    result.events, message)
        answer.failed()
        result.failed = True
        error = typed_error_event(message, code) if call.endpoint.stream_error == "typed" else \
            stream_error_event(message, "server_error", code)
        out.append(error)  # after the events read before it
        await send(b"".join(out), True)
        return result
    finally:
        if ended:
            reply.end()
        else:
            reply.close()
        answer.lease.release(0.0 if call.endpoint.shows_stored_usage
                             else record_usage(answer.controller, result.usage, call.label))


async def relay_bytes(answer: Answer, send: Send) -> int:
    """Send a binary answer's bytes as they arrive; return how many. Raises `BrokenAnswer` if it breaks."""
    reply = answer.reply
    sent = 0
    try:
        for piece in answer.first_events:
            sent += len(piece)
            await send(piece, False)
        while True:
            piece = await reply.read_chunk()
            if not piece:
                answer.completed()
                await send(b"", True)
                return sent
            sent += len(piece)
            await send(piece, False)
    except UpstreamError as exc:
        log.warning("binary answer from controller %s broke after %d bytes: %s", answer.controller.name, sent,
                    exc.message)
        answer.failed()
        raise BrokenAnswer(exc.message) from None
    finally:
        reply.close()
        answer.lease.release(None)
