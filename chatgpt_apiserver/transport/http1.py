"""A lean pooled keep-alive HTTP/1.1 client for the relay's one kind of call: POST a body, read the answer.

aiohttp's general-purpose client costs about a third of the gateway's CPU per request; this one does only
what the relay needs: keep-alive pooling, TLS, Content-Length and chunked bodies, an idle timeout per
read, and back-pressure. Proxied controllers still use aiohttp.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from typing import Any, Optional

from .reply import Reply, UpstreamError

HEAD_LIMIT = 64 * 1024
PAUSE_ABOVE = 1024 * 1024  # buffered body bytes before reading from the upstream pauses


Headers = dict[str, str]  # response headers under lower-case names, as every reader looks them up


class Connection(asyncio.Protocol):
    """One upstream connection; it carries one request at a time."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self.transport: Optional[asyncio.Transport] = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.buffer = bytearray()
        self.head: Optional[asyncio.Future[tuple[int, Headers]]] = None
        self.body: deque[bytes] = deque()
        self.body_size = 0
        self.done = False
        self.error: Optional[UpstreamError] = None
        self.keep_alive = True
        self.in_body = False
        self.length: Optional[int] = None  # bytes left with Content-Length
        self.chunked = False
        self.chunk_left = 0
        self.chunk_crlf = False
        self.until_close = False
        self.decoder: Any = None
        self._waiter: Optional[asyncio.Future[None]] = None
        self._paused = False

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._parse()
        except (ValueError, IndexError, zlib.error):
            self._fail(UpstreamError("protocol", "the upstream sent a malformed HTTP response"))
            self.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if self.until_close and self.in_body and not self.done:
            self._finish()
        elif not self.done:
            what = "sending the body" if self.in_body else "answering"
            self._fail(UpstreamError("connection", f"the upstream closed the connection while {what}"))

    def pause_writing(self) -> None:  # the upstream reads slowly; requests are small: nothing to do
        pass

    # --- parsing ---------------------------------------------------------------------------------

    def _parse(self) -> None:
        while not self.in_body:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > HEAD_LIMIT:
                    raise ValueError("response head too large")
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[:end + 4]
            lines = head.split("\r\n")
            version, status_text = lines[0].split(" ", 2)[:2]
            status = int(status_text)
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue): the real one follows
            headers: Headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            self._frame(version, status, headers)
            if self.head is not None and not self.head.done():
                self.head.set_result((status, headers))
        self._read_body()

    def _frame(self, version: str, status: int, headers: Headers) -> None:
        connection = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        self.in_body = True
        if status in (204, 304):
            self.length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.chunked = True
        elif "content-length" in headers:
            self.length = int(headers["content-length"])
        else:
            self.until_close = True
            self.keep_alive = False
        if self.length == 0:
            self._finish()

    def _read_body(self) -> None:
        buffer = self.buffer
        if self.length is not None:
            if buffer and self.length:
                piece = bytes(buffer[:self.length])
                del buffer[:len(piece)]
                self.length -= len(piece)
                self._push(piece)
                if not self.length:
                    self._finish()
        elif self.until_close:
            if buffer:
                self._push(bytes(buffer))
                buffer.clear()
        else:
            self._read_chunks()
        if self._waiter is not None and not self._waiter.done() and (self.body or self.done or self.error):
            self._waiter.set_result(None)

    def _read_chunks(self) -> None:
        buffer = self.buffer
        while buffer and not self.done:
            if self.chunk_crlf:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise ValueError("missing CRLF after a chunk")
                del buffer[:2]
                self.chunk_crlf = False
            elif self.chunk_left:
                piece = bytes(buffer[:self.chunk_left])
                del buffer[:len(piece)]
                self.chunk_left -= len(piece)
                self._push(piece)
                if not self.chunk_left:
                    self.chunk_crlf = True
            else:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buffer[:end]).split(b";", 1)[0].strip(), 16)
                if size == 0:  # the last chunk, then optional trailers and a blank line
                    trailer_end = buffer.find(b"\r\n\r\n", end)
                    if trailer_end >= 0:
                        del buffer[:trailer_end + 4]
                        self._finish()
                    return
                del buffer[:end + 2]
                self.chunk_left = size

    def _push(self, piece: bytes) -> None:
        if self.decoder is not None:
            piece = self.decoder.decompress(piece)
            if not piece:
                return
        self.body.append(piece)
        self.body_size += len(piece)
        if self.body_size > PAUSE_ABOVE and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _finish(self) -> None:
        if self.decoder is not None:
            rest = self.decoder.flush()
            if rest:
                self.body.append(rest)
        self.done = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- what the reply uses ---------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[tuple[int, Headers]]:
        """Write one request; the future resolves with (status, headers)."""
        assert self.transport is not None
        self._reset()
        self.head = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.head

    async def next_piece(self) -> bytes:
        """The next body bytes, b"" at the end; waits at most the idle timeout for the upstream."""
        while True:
            if self.body:
                piece = self.body.popleft()
                self.body_size -= len(piece)
                if self._paused and self.body_size < PAUSE_ABOVE // 2 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return piece
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timer = loop.call_later(self.idle_timeout, self._idle_expired)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None

    def _idle_expired(self) -> None:
        self._fail(UpstreamError("timeout", "timed out waiting for the upstream"))
        self.close()

    @property
    def reusable(self) -> bool:
        """Finished cleanly, kept alive, and nothing unread."""
        return self.done and self.keep_alive and self.error is None and not self.closed and not self.buffer

    def close(self) -> None:
        """Drop the connection."""
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class Http1Reply(Reply):
    """A reply read from a pooled connection; closing returns the connection when it is reusable."""

    __slots__ = ("_connection", "_pool", "headers", "status")

    def __init__(self, pool: Pool, connection: Connection, status: int, headers: Headers) -> None:
        self._pool = pool
        self._connection: Optional[Connection] = connection
        self.status = status
        self.headers = headers

    async def read(self) -> bytes:
        pieces: list[bytes] = []
        while True:
            piece = await self.read_chunk()
            if not piece:
                return b"".join(pieces)
            pieces.append(piece)

    async def read_chunk(self) -> bytes:
        if self._connection is None:
            return b""
        piece = await self._connection.next_piece()
        if not piece:
            self.close()  # the whole body is in: the connection goes back to the pool at once
        return piece

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)


class Pool:
    """Keep-alive connections to one origin, at most `limit` open at once."""

    def __init__(self, host: str, port: int, tls: bool, limit: int, keepalive: float, connect_timeout: float,
                 idle_timeout: float) -> None:
        self.host, self.port = host, port
        self.ssl: Optional[ssl.SSLContext] = ssl.create_default_context() if tls else None
        self.limit = limit
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.idle: deque[Connection] = deque()
        self.open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def request(self, data: bytes) -> Http1Reply:
        """Send one request on a pooled (or new) connection and wait for the response head."""
        connection = await self._acquire()
        try:
            status, headers = await connection.send(data)
        except BaseException:
            self.release(connection)
            raise
        return Http1Reply(self, connection, status, headers)

    async def _acquire(self) -> Connection:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()  # the most recently used is the likeliest to be alive
            if not connection.closed and now - connection.idle_since < self.keepalive:
                return connection
            self._discard(connection)
        while self.open >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self.idle:
                return await self._acquire()
        self.open += 1
        try:
            loop = asyncio.get_running_loop()
            _transport, connection = await asyncio.wait_for(loop.create_connection(
                lambda: Connection(self.idle_timeout), self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl else None), self.connect_timeout)
        except TimeoutError:
            self._closed_one()
            raise UpstreamError("timeout", "timed out connecting to the upstream", connecting=True) from None
        except OSError as error:
            self._closed_one()
            reason = error.strerror or type(error).__name__
            raise UpstreamError("connection", f"cannot connect to the upstream ({reason})", connecting=True) from None
        except BaseException:
            self._closed_one()
            raise
        return connection

    def release(self, connection: Connection) -> None:
        """Take a connection back: pooled if it is clean, closed otherwise."""
        if connection.reusable:
            connection.idle_since = time.monotonic()
            self.idle.append(connection)
            self._wake_one()
        else:
            self._discard(connection)

    def _discard(self, connection: Connection) -> None:
        connection.close()
        self._closed_one()

    def _closed_one(self) -> None:
        self.open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every idle connection (busy ones close when their replies do)."""
        while self.idle:
            self._discard(self.idle.pop())
