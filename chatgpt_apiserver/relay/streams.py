"""Relaying a stream: one upstream event at a time, ending in [DONE] or in one error event."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Optional

from ..call import Call
from ..errors import stream_error_event
from ..scheduling.outcomes import record_usage, usage_of
from ..secret import scrub
from ..transport.reply import UpstreamError
from .attempts import Answer
from .sse import DONE, MalformedEvent, event_data, read_event

log = logging.getLogger("chatgpt_apiserver.streaming")

Send = Callable[[bytes, bool], Awaitable[None]]  # (bytes, whether they end the stream)


@dataclass
class StreamResult:
    """How a relayed stream ended."""

    events: int = 0
    usage: Optional[dict[str, Any]] = None


async def relay_stream(answer: Answer, call: Call, send: Send, secrets: tuple[bytes, ...] = ()) -> StreamResult:
    """Send every upstream event as it arrives; on an upstream failure send the error event instead of [DONE].

    The events that one upstream read completes leave together, in one `send`: none waits for a later one.
    The final usage event settles the controller's token reservation; it is relayed only if the client
    asked for it. `send` writes its bytes and awaits their flush, told whether they end the stream; it raises if
    the client has gone.
    """
    result = StreamResult()
    reply = answer.reply
    splitter = answer.splitter
    assert splitter is not None
    pending = answer.first_events
    out: list[bytes] = []  # what this read's events put on the wire
    ended = False  # [DONE] came: the upstream's answer is over but for its last bytes
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
                    if "error" in parsed:
                        # Already in OpenAI's error shape: pass it on (scrubbed) and end without [DONE].
                        out.append(scrub(event, secrets))
                        result.events += 1
                        await send(b"".join(out), True)
                        log.warning("controller %s sent an error event mid-stream", answer.controller.name)
                        answer.failed()
                        return result
                    usage = usage_of(parsed)
                    if usage is not None:
                        result.usage = usage
                        if call.inject_usage and not parsed.get("choices"):
                            continue  # asked for by the gateway, not the client
                out.append(event)
                result.events += 1
            if out:
                await send(out[0] if len(out) == 1 else b"".join(out), False)
                out.clear()
            chunk = await reply.read_chunk()
            if not chunk:
                if splitter.pending.strip():
                    raise MalformedEvent("the upstream stream ended inside an event")
                raise UpstreamError("protocol", "the upstream stream ended without [DONE]")
            pending = splitter.feed(chunk)
    except (UpstreamError, MalformedEvent) as exc:
        kind = exc.kind if isinstance(exc, UpstreamError) else "protocol"
        message = "The upstream stream failed: " + (exc.message if isinstance(exc, UpstreamError) else str(exc))
        code = "upstream_timeout" if kind == "timeout" else "upstream_stream_error"
        log.warning("stream from controller %s failed after %d events: %s", answer.controller.name,
                    result.events, message)
        answer.failed()
        out.append(stream_error_event(message, "server_error", code))  # after the events read before it
        await send(b"".join(out), True)
        return result
    finally:
        if ended:
            reply.end()
        else:
            reply.close()
        answer.lease.release(record_usage(answer.controller, result.usage, call.model))
