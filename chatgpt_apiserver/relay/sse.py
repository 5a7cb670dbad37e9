"""Server-sent events: split upstream bytes into whole events, and read an event only when needed."""

from __future__ import annotations

from typing import Any, Optional

import orjson

DONE = b"[DONE]"


class EventSplitter:
    """Cuts a byte stream into complete SSE events (each ending in a blank line), however it is split."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the events completed by them, each with its closing blank line."""
        if self._buffer:
            data = self._buffer + data
        if b"\r" in data:
            # CRLF and lone CR are line ends too; hold a trailing CR back in case LF follows.
            held = data.endswith(b"\r")
            if held:
                data = data[:-1]
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                data = data + b"\r"
        events = []
        start = 0
        size = len(data)
        while True:
            while start < size and data[start] == 10:  # blank lines between events
                start += 1
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            events.append(data[start:end + 2])
            start = end + 2
        self._buffer = data[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._buffer


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


class MalformedEvent(ValueError):
    """An upstream event that is not JSON (or not an object)."""


def read_event(data: bytes) -> dict[str, Any]:
    """Parse an event's JSON object; raise `MalformedEvent` if it is anything else."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedEvent("the upstream sent an event that is not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedEvent("the upstream sent an event that is not a JSON object")
    return value
