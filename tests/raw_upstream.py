"""A raw-socket fake upstream: it answers each request with exact bytes from a script, for what a Tornado fake
cannot send (chunk extensions, trailers, folded headers, bad sizes, 1xx, close-delimited bodies, early closes)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Optional

import orjson

from chatgpt_apiserver.transport.client import Transport
from chatgpt_apiserver.transport.http1 import Http1Client
from chatgpt_apiserver.transport.request import UpstreamRequest

from .fake_upstream import completion

HELLO = b"hello, world"
CHAT = UpstreamRequest("POST", "/chat/completions", b"{}", (("Content-Type", "application/json"),))


@dataclass
class Script:
    """What the fake does with one request: send `pieces` (`pause` seconds apart), then maybe close."""

    pieces: tuple[bytes, ...] = ()
    pause: float = 0.0
    close: bool = False  # close the connection once the pieces are sent
    hang: bool = False  # hold the connection open with nothing more to say (until the peer goes)


@dataclass
class RawRequest:
    """One request as it arrived."""

    head: bytes
    body: bytes
    connection: int  # which connection carried it

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def target(self) -> str:
        return self.request_line.split(" ")[1]

    @property
    def headers(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for line in self.head.split(b"\r\n")[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            found[name.strip().lower()] = value.strip()
        return found


def head(*lines: str) -> bytes:
    """A response head from its lines."""
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer(body: bytes, *head: str, status: str = "200 OK") -> bytes:
    """An HTTP/1.1 answer with Content-Length and the given extra header lines."""
    lines = [f"HTTP/1.1 {status}", *head, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunked(*chunks: bytes, head: tuple[str, ...] = (), trailer: bytes = b"") -> bytes:
    """An HTTP/1.1 chunked answer."""
    lines = ["HTTP/1.1 200 OK", *head, "Transfer-Encoding: chunked"]
    body = b"".join(chunk(c) for c in chunks)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body + b"0\r\n" + trailer + b"\r\n"


COMPLETION = orjson.dumps(completion("fake-model", "raw hello"))
OK = Script((answer(COMPLETION, "Content-Type: application/json"),))


SSE_HEAD = head("HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: chunked")


def sse(*events: bytes) -> bytes:
    """SSE event lines, each closed by a blank line."""
    return b"".join(b"data: " + event + b"\n\n" for event in events)


def gzip_bomb(inflated: int, piece: int = 1024 * 1024) -> bytes:
    """A gzip stream of `inflated` zero bytes, built without holding them (about 1/1000 of the size)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(piece)
    parts = [packer.compress(zeros) for _ in range(inflated // piece)]
    parts.append(packer.flush())
    return b"".join(parts)


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data)


class _Connection(asyncio.Protocol):
    def __init__(self, fake: RawUpstream, number: int) -> None:
        self.fake = fake
        self.number = number
        self.buffer = b""
        self.transport: Optional[asyncio.Transport] = None
        self.queue: deque[RawRequest] = deque()
        self.busy = False
        self.closed_by_us = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fake.live.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            request = RawRequest(head, self.buffer[end + 4:end + 4 + length], self.number)
            self.buffer = self.buffer[end + 4 + length:]
            self.fake.requests.append(request)
            self.queue.append(request)
            if not self.busy:
                self.busy = True
                self.fake.tasks.add(asyncio.get_running_loop().create_task(self._answer()))

    async def _answer(self) -> None:
        assert self.transport is not None
        while self.queue:
            self.queue.popleft()
            script = self.fake.next_script()
            for index, piece in enumerate(script.pieces):
                if index and script.pause:
                    await asyncio.sleep(script.pause)
                if self.transport.is_closing():
                    return
                self.transport.write(piece)
            if script.close:
                self.closed_by_us = True
                self.transport.close()
                return
            if script.hang:
                return
        self.busy = False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.fake.live.discard(self)
        if not self.closed_by_us:
            self.fake.closed_by_peer += 1


class RawUpstream:
    """A loopback server scripted request by request; start it inside the event loop with `start()`."""

    def __init__(self) -> None:
        self.scripts: deque[Script] = deque()
        self.default = OK
        self.requests: list[RawRequest] = []
        self.live: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.closed_by_peer = 0  # connections the client closed
        self.port = 0
        self._server: Optional[asyncio.Server] = None

    def cue(self, *scripts: Script) -> None:
        """Queue one-shot scripts, used before the default."""
        self.scripts.extend(scripts)

    def next_script(self) -> Script:
        return self.scripts.popleft() if self.scripts else self.default

    async def start(self) -> None:
        def connection() -> _Connection:
            self.connections += 1
            return _Connection(self, self.connections)

        self._server = await asyncio.get_running_loop().create_server(connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for connection in list(self.live):
            if connection.transport is not None:
                connection.closed_by_us = True
                connection.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def client_for(raw: RawUpstream, base_url: Optional[str] = None, **limits: float) -> Http1Client:
    """The transport's client for `raw` (a 30 s idle timeout unless `limits` say otherwise)."""
    settings = {"idle_timeout": 30.0, **limits}
    return Http1Client(base_url or raw.base_url, [("Authorization", "Bearer sk-raw")],
                       Transport(**settings))  # type: ignore[arg-type]


async def fetch(client: Http1Client, request: UpstreamRequest = CHAT) -> tuple[int, dict[str, str], bytes]:
    """One exchange: status, headers and the whole body."""
    reply = await client.request(request)
    try:
        return reply.status, dict(reply.headers), await reply.read()
    finally:
        reply.close()
