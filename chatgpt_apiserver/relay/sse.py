"""Server-sent events: split upstream bytes into whole events, and read an event only when needed."""

from __future__ import annotations

from typing import Any, Optional

import orjson

DONE = b"[DONE]"
DEFAULT_LIMIT = 16 * 1024 * 1024  # max_event_size


class MalformedEvent(ValueError):
    """An upstream event that cannot be relayed: not JSON, not an object, or too large."""


class EventTooLarge(MalformedEvent):
    """An upstream event longer than max_event_size."""


class EventSplitter:
    """Cuts a byte stream into complete SSE events (each ending in a blank line), however it is split.

    Each byte is scanned once: an unfinished event is kept in a growing buffer and only its new end is
    searched, so an event that never ends costs linear time, up to `limit` bytes, and then fails.
    """

    __slots__ = ("_buffer", "_cr", "_scanned", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._buffer = bytearray()  # an unfinished event
        self._scanned = 0  # how much of the buffer is known to hold no event end
        self._cr = False  # a CR ended the last bytes: a LF may follow

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the events completed by them, each with its closing blank line.

        Raises `EventTooLarge` when an event passes the limit.
        """
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if b"\r" in data:
            # CRLF and lone CR are line ends too; hold a trailing CR back in case LF follows.
            if data.endswith(b"\r"):
                data = data[:-1]
                self._cr = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer
        if buffer:
            buffer += data
            if buffer.find(b"\n\n", max(0, self._scanned - 1)) < 0:
                self._scanned = len(buffer)
                if len(buffer) > self.limit:
                    raise EventTooLarge(f"the upstream sent an event over max_event_size ({self.limit} bytes)")
                return []
            data = bytes(buffer)  # once per completed event, not once per read
            buffer.clear()
        events = []
        start = 0
        size = len(data)
        limit = self.limit
        while True:
            while start < size and data[start] == 10:  # blank lines between events
                start += 1
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            if end + 2 - start > limit:
                raise EventTooLarge(f"the upstream sent an event over max_event_size ({limit} bytes)")
            events.append(data[start:end + 2])
            start = end + 2
        if start < size:
            if size - start > limit:
                raise EventTooLarge(f"the upstream sent an event over max_event_size ({limit} bytes)")
            buffer += memoryview(data)[start:]
            self._scanned = size - start
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return bytes(self._buffer)


def event_data(event: bytes) -> Optional[bytes]:
    """The `data` of an event (several data lines joined by newlines), or None for a comment-only event."""
    if event.startswith(b"data: ") and event.find(b"\n") == len(event) - 2:
        return event[6:-2]
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def read_event(data: bytes) -> dict[str, Any]:
    """Parse an event's JSON object; raise `MalformedEvent` if it is anything else."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedEvent("the upstream sent an event that is not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedEvent("the upstream sent an event that is not a JSON object")
    return value
