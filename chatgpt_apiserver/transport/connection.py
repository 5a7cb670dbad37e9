"""One upstream connection: a request out, its answer parsed by llhttp (httptools), the body held in bounds."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Optional

import httptools

from .reply import Piece, UpstreamError

HEAD_LIMIT = 64 * 1024  # bytes of an answer's heads (interim ones included) and trailers, together
PAUSE_ABOVE = 1024 * 1024  # unread body bytes at which reading from the upstream pauses
DRAIN_LIMIT = 64 * 1024  # body bytes an answer may still send after its reader is done, to keep its connection
DRAIN_TIMEOUT = 1.0  # seconds it may take them to come
READ_SIZE = 256 * 1024  # bytes one read from an upstream may bring
DIRECT_ABOVE = 256 * 1024  # a whole body with more bytes still to come than this is read straight into its buffer

# What the parser reads from: one per process, as every read is parsed before the next one starts.
_scratch = memoryview(bytearray(READ_SIZE))

Headers = dict[str, str]  # response headers under lower-case names, as every reader looks them up


def malformed(detail: str) -> UpstreamError:
    """The error for an answer that breaks HTTP/1.1."""
    return UpstreamError("protocol", f"the upstream sent a malformed HTTP response ({detail})")


_NO_CALLBACKS = object()  # what a closed connection's parser calls back: nothing (see Connection._detach)


class _AfterTheAnswer(Exception):
    """Raised from a parser callback to stop at bytes that follow a complete answer."""


class Connection(asyncio.BufferedProtocol):
    """One upstream connection; it carries one exchange at a time.

    Reads land in a scratch buffer the parser reads; its callbacks only record what they see, and
    `data_received` acts on it once the parser returns. The rest of a large whole body skips the parser and
    the scratch: it is read straight into one buffer of its announced length, then handed on as it is.
    """

    def __init__(self, idle_timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        self.idle_timeout = idle_timeout
        self.loop = loop  # (asked once: asking the running loop is a system call, getpid, on Python 3.11)
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False  # it carried an exchange before the current one
        self.idle_since = 0.0
        self.head: Optional[asyncio.Future[None]] = None
        self.status = 0
        self.headers: Headers = {}
        self.body: deque[Piece] = deque()
        self.buffered = 0
        self.complete = False  # the whole answer is parsed
        self.error: Optional[UpstreamError] = None
        self.received = 0  # bytes of the current answer so far
        self.keep_alive = False
        self.until_close = False  # the body ends when the connection does
        self._in_head = True
        self._head_bytes = 0
        self._extra = False  # bytes after the answer: never reuse the connection
        self._trailers = False
        self._waiter: Optional[asyncio.Future[None]] = None
        self._paused = False
        self._whole: Optional[int] = None  # a whole-body read is waiting: its size limit (no pause, no wake-ups)
        self._whole_timer: Optional[asyncio.TimerHandle] = None  # its idle timer, re-armed while data comes
        self._last_data = 0.0
        self._drained: Optional[Callable[[Connection], None]] = None  # who gets it back once drained
        self._drain_left = 0
        self._drain_timer: Optional[asyncio.TimerHandle] = None
        self._body_seen = 0  # body bytes of the current answer the parser gave
        self._direct: Optional[bytearray] = None  # the rest of a whole body, read into here directly
        self._direct_view = _scratch
        self._filled = 0

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _scratch if self._direct is None else self._direct_view[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        direct = self._direct
        if direct is None:
            self.data_received(_scratch[:nbytes])
            return
        self.received += nbytes
        self._filled += nbytes
        self._last_data = self.loop.time()
        if self._filled == len(direct):
            self._direct, self._direct_view = None, _scratch
            self.body.append(direct)
            self.buffered += self._filled
            self.complete = True
            self.parser = httptools.HttpResponseParser(self)  # it stopped mid-body; the next answer needs a fresh one
            self._wake()

    def data_received(self, data: bytes | memoryview) -> None:
        if self.head is None or self.complete:
            self._extra = True  # nothing was asked, or the answer is over: the upstream is confused
            self.close()
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(malformed("an unrequested protocol switch"))
        except httptools.HttpParserError as exc:
            if not self._extra:  # (on_message_begin stops the parser at bytes after the answer)
                self._fail(malformed(str(exc) or type(exc).__name__))
        # A head still arriving is all that was received; a complete one is counted header by header.
        if (self._head_bytes > HEAD_LIMIT or (self._in_head and self.received > HEAD_LIMIT)) and self.error is None:
            what = "trailers" if self._trailers else "response head"
            self._fail(UpstreamError("protocol", f"the upstream's {what} ran over {HEAD_LIMIT} bytes"))
        if self.error is not None or self._extra:
            self.close()
        elif self._waiter is not None and (self.complete or (self.body and self._whole is None)):
            self._wake()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self._detach()
        if self.head is not None and not self.complete:
            if self.until_close and not self._in_head:
                self.complete = True  # a close-delimited body ends here
                self._wake()
            else:
                what = "answering" if self._in_head else "sending the body"
                self._fail(UpstreamError("connection", f"the upstream closed the connection while {what}"))
        if self._drained is not None:
            self._end_drain()

    def eof_received(self) -> Optional[bool]:
        return None  # a half-closed upstream is a closed one

    # --- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self._extra = True
            raise _AfterTheAnswer
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if not self._in_head:  # a trailer: counted against the limit, then dropped
            self._trailers = True
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        headers = self.headers
        self.until_close = (status not in (204, 304) and "content-length" not in headers
                            and not headers.get("transfer-encoding", "").lower().rstrip().endswith("chunked"))
        self._in_head = False
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._drained is not None:  # nobody reads it any more
            self._drain_left -= len(body)
            if self._drain_left < 0:
                self._extra = True  # too much: the connection is not worth keeping
            return
        self.body.append(body)
        self.buffered += len(body)
        self._body_seen += len(body)
        whole = self._whole
        if whole is not None:
            self._last_data = self.loop.time()
            if self.buffered > whole:
                self._fail(UpstreamError("protocol", "the upstream's answer runs past max_upstream_body_size "
                                                     f"({whole} bytes)"))
            return
        if self.buffered > PAUSE_ABOVE and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._in_head:
            return  # the end of an interim answer
        self.complete = True
        if self._drained is not None:  # once the parser is done with this read
            self.loop.call_soon(self._end_drain)

    # --- what the pool and the reply use -----------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[None]:
        """Write one request; the future resolves once the answer's head is in `status` and `headers`."""
        self.head = head = self.loop.create_future()
        self.status, self.headers = 0, {}
        self.body.clear()
        self.buffered = self.received = self._head_bytes = self._body_seen = 0
        self.complete = self.until_close = self._extra = self._trailers = False
        self._in_head = True
        self.error = None
        if self.closed or self.transport is None or self.transport.is_closing():
            self._fail(UpstreamError("connection", "the upstream closed the connection"))
        else:
            self.transport.write(data)
        return head

    async def next_piece(self) -> bytes:
        """All body bytes received so far and not yet read (b"" at the end); waits at most the idle timeout.

        A read holding several chunks hands them out together, so that what arrived together can leave
        together (SSE events relayed in one write).
        """
        while True:
            body = self.body
            if body:
                piece = body.popleft() if len(body) == 1 else b"".join(body)
                if not isinstance(piece, bytes):  # (only a whole body is read straight into a buffer)
                    piece = bytes(piece)
                body.clear()
                self.buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return piece
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            loop = self.loop
            self._waiter = loop.create_future()
            timer = loop.call_later(self.idle_timeout, self._idle_expired)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None

    async def whole(self, limit: int) -> list[Piece]:
        """The rest of the body at once, as the pieces it came in, at most `limit` bytes: no pause and no
        wake-up per piece, and no copy (a large answer is written on as it is).

        The idle timeout still applies between the upstream's reads (one timer, re-armed when it fires early).
        """
        if self.buffered > limit:
            self._fail(UpstreamError("protocol", f"the upstream's answer runs past max_upstream_body_size ({limit} "
                                                 "bytes)"))
        loop = self.loop
        self._whole, self._last_data = limit, loop.time()
        self._read_directly()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        try:
            while self.error is None and not self.complete:
                self._waiter = loop.create_future()
                if self._whole_timer is None:
                    self._whole_timer = loop.call_later(self.idle_timeout, self._whole_idle)
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            if self.error is not None:
                raise self.error
            pieces = list(self.body)
            self.body.clear()
            self.buffered = 0
            return pieces
        finally:
            self._whole = None
            if self._direct is not None:  # given up half-way: what comes next is not for the parser
                self._direct, self._direct_view = None, _scratch
                self.close()
            if self._whole_timer is not None:
                self._whole_timer.cancel()
                self._whole_timer = None

    def _whole_idle(self) -> None:
        """The whole-body read's timer: fail if nothing came for the idle timeout, else wait for the rest of it.

        A method, not a closure in `whole`: a closure that re-arms itself is a reference cycle, garbage for the
        cyclic collector on every non-streamed answer.
        """
        loop = self.loop
        left = self._last_data + self.idle_timeout - loop.time()
        if left > 0:
            self._whole_timer = loop.call_later(left, self._whole_idle)
        else:
            self._whole_timer = None
            self._idle_expired()

    def _read_directly(self) -> None:
        """Read the rest of a large body of known length straight into one buffer, past the parser."""
        if self.complete or self.error is not None or self.closed or self._in_head:
            return
        headers = self.headers
        if "transfer-encoding" in headers:
            return
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            return
        left = length - self._body_seen
        if left > DIRECT_ABOVE:
            self._direct = bytearray(left)
            self._direct_view, self._filled = memoryview(self._direct), 0

    def drain(self, done: Callable[[Connection], None]) -> bool:
        """Read the rest of an answer its reader no longer wants, if it is worth keeping the connection for:
        `done` gets the connection back when the answer ends, fails, or takes too long. False if not worth it.
        """
        if (self.complete or self.error is not None or self.closed or self._in_head or not self.keep_alive
                or self.until_close or self._extra or self.transport is None):
            return False
        self._drained = done
        self._drain_left = DRAIN_LIMIT
        self.body.clear()
        self.buffered = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._drain_timer = self.loop.call_later(DRAIN_TIMEOUT, self.close)
        return True

    def _end_drain(self) -> None:
        done, self._drained = self._drained, None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if done is not None:
            done(self)

    def _idle_expired(self) -> None:
        self._fail(UpstreamError("timeout", "timed out waiting for the upstream"))
        self.close()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def answered(self) -> bool:
        """Some byte of the current answer arrived (a request that got none may be sent again)."""
        return self.received > 0

    @property
    def reusable(self) -> bool:
        """Finished cleanly, kept alive, and nothing unexpected after the answer."""
        return (self.complete and self.keep_alive and self.error is None and not self.closed
                and not self._extra and not self.until_close)

    def _detach(self) -> None:
        """Once closed, let go of what points back to the connection: its parser (which holds its callbacks)
        and its transport (uvloop's TLS transport keeps its protocol after the close).

        Were either kept, every closed connection would be a reference cycle that only the cyclic collector
        frees: a burst of 5,000 streams left 5,000 of them, ~70,000 objects, in the oldest generation, which
        CPython collects rarely.
        """
        self.parser = httptools.HttpResponseParser(_NO_CALLBACKS)
        self.transport = None

    def forget(self) -> None:
        """Drop the last answer's error, and the head future that holds it too, once the pool lets the
        connection go. A raised error's traceback leads back to the connection (a frame's local): kept, the two
        would be a cycle. Not while a read still waits on the connection: it is owed that error."""
        if self._waiter is None:
            self.error = None
            self.head = None

    def close(self) -> None:
        """Drop the connection."""
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
