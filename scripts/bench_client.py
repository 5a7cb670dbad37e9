"""Streaming load client for benchmarks: raw asyncio sockets, one keep-alive connection per worker.

It timestamps every read and counts SSE events in it, so time to first token and gaps between events are
measured the same way against the gateway and directly against the upstream.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson


@dataclass
class StreamStats:
    """Per-stream timings in seconds."""

    ttft: float = 0.0
    gaps: list[float] = field(default_factory=list)
    events: int = 0
    done: bool = False
    error: str = ""


def request_bytes(port: int, path: str, body: dict[str, object]) -> bytes:
    data = orjson.dumps(body)
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


class Connection:
    """A keep-alive HTTP/1.1 connection that sends one streaming request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def stream(self, payload: bytes) -> StreamStats:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        assert self.reader is not None and self.writer is not None
        stats = StreamStats()
        started = time.perf_counter()
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            stats.error = head.split(b"\r\n", 1)[0].decode()
            self.writer.close()
            self.writer = None
            return stats
        last = 0.0
        tail = b""
        while True:
            data = await self.reader.read(65536)
            now = time.perf_counter()
            if not data:
                stats.error = "connection closed"
                self.writer = None
                return stats
            count = data.count(b"data: ")
            if count:
                if not stats.events:
                    stats.ttft = now - started
                else:
                    stats.gaps.append(now - last)
                last = now
                stats.events += count
            if b"data: [DONE]" in data or b"event: response.completed" in data:
                stats.done = True
            tail = (tail + data)[-16:]
            if stats.done and tail.endswith(b"\r\n0\r\n\r\n"):
                return stats
            if b'data: {"error"' in data:
                stats.error = "error event"
                self.writer.close()
                self.writer = None
                return stats

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the sorted values fall (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]
