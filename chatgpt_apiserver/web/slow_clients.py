"""Client connections: slow ones are answered and cut off, oversized heads get 431, a drain closes idle ones,
and a client that stops taking its answer is cut off.

Tornado can time reads itself (`idle_connection_timeout`, `body_timeout`), but it arms a timer and a chain
of futures on every read: about 25 µs per request at concurrency 1 here (see README, Performance). Instead,
the server notes a deadline when a read starts and one sweep, a fraction of the shortest timeout apart,
acts on every connection past its deadline: an idle one (or one still sending its head) is closed; one
whose body is late gets 408 from its handler, then is closed. The timeouts are read from the settings at
each request, so a reload changes them. On the write side, `written` watches a write that did not reach
the socket at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPConnection, HTTPMessageDelegate, RequestStartLine, ResponseStartLine
from tornado.iostream import IOStream, UnsatisfiableReadError

from ..errors import error_body
from .accept import Acceptor

log = logging.getLogger("chatgpt_apiserver.slow_clients")

Timeouts = Callable[[], tuple[float, float]]  # (idle or headers, body) in seconds
SlowBody = Callable[[HTTPConnection], bool]  # asks the request's handler to answer 408; False if it could not
HEADERS, BODY, CLOSING = "headers", "body", "closing"
CLOSING_GRACE = 5.0  # seconds a client gets to read a 408 before its connection is closed anyway


def head_too_large_answer(limit: int) -> bytes:
    """The raw 431 sent when a request head outgrows `limit` bytes (there is no request to answer it through)."""
    body = error_body(f"The request head (request line and headers) is over the limit of {limit} bytes.",
                      "invalid_request_error", None, "request_header_fields_too_large")
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


# What Tornado writes, bare, to a client whose request it cannot parse (a malformed request line or header,
# both Transfer-Encoding and Content-Length, a bad chunk size), before it closes the connection.
TORNADO_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"
_BAD_REQUEST_BODY = error_body("The request is not valid HTTP/1.1: its request line, a header, or the framing of "
                               "its body (Content-Length, Transfer-Encoding) is malformed.",
                               "invalid_request_error", None, "malformed_http_request")
MALFORMED_REQUEST_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                            b"Connection: close\r\n\r\n%s" % (len(_BAD_REQUEST_BODY), _BAD_REQUEST_BODY))


# Bytes one read from a client may bring. Tornado allocates (and zero-fills) a buffer this large for every
# read, the last one of each batch finding nothing: at its default of 64 KiB that was a tenth of the
# instructions of a whole request. A request head and a chat body fit in one such read.
CLIENT_READ_SIZE = 16 * 1024


class ClientStream(IOStream):
    """A client connection's stream: Nagle's algorithm off for its whole life, and a request head over the
    limit answered with 431 before it closes.

    Tornado turns Nagle off only as an answer finishes and back on after it, two `setsockopt` calls per
    request, and meanwhile a stream's events could wait for the client's ACK of the previous write. The
    gateway writes whole events (or whole answers), so it is set once, at accept, and kept.

    Tornado closes the stream itself when a head outgrows `max_header_size`, with no answer; `close` is the
    one moment that still has the socket. A request it cannot parse gets a bare 400 without a body: it is
    answered in OpenAI's error shape instead.
    """

    head_answer: Optional[bytes] = None  # set while the connection waits for a request head

    def set_nodelay(self, value: bool) -> None:
        """Kept on: see the class."""

    def write(self, data: Union[bytes, memoryview]) -> asyncio.Future[None]:
        if data == TORNADO_BAD_REQUEST:  # (a length compare for every other write)
            data = MALFORMED_REQUEST_ANSWER
        return super().write(data)

    def close(self, exc_info: Any = False) -> None:
        if isinstance(exc_info, UnsatisfiableReadError) and self.head_answer and not self.closed():
            self._answer_before_closing(self.head_answer)
        super().close(exc_info)

    def _answer_before_closing(self, answer: bytes) -> None:
        sock = self.socket
        try:
            for _ in range(16):  # read what the client already sent, so closing does not reset the answer away
                if not sock.recv(65536):
                    break
        except OSError:
            pass  # nothing more waiting (or the socket failed: the send below says so)
        try:
            sock.send(answer)
        except OSError:
            return


class SlowClientServer(HTTPServer):
    """Tornado's HTTPServer with read timeouts by sweep, 431/408 answers, EMFILE back-off and a drain."""

    def initialize(self, *args: Any, timeouts: Timeouts, on_slow_body: Optional[SlowBody] = None,  # type: ignore[override]
                   **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        # Tornado puts a one-hour timer on every header read when given no idle timeout; the sweep does it.
        self.conn_params.header_timeout = None
        self.timeouts = timeouts
        self.on_slow_body = on_slow_body
        self.draining = False
        # A connection is here while it waits for a request's head or body: (deadline, for what, its request).
        self.reading: dict[HTTP1ServerConnection, tuple[float, str, HTTPConnection]] = {}
        self._head_answer = (-1, b"")
        self._closing = False
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._schedule()

    def add_sockets(self, sockets: Any) -> None:
        """Listen on `sockets` through an Acceptor (EMFILE back-off) instead of Tornado's accept loop."""
        assert self.ssl_options is None, "TLS is terminated in front of the gateway"
        for sock in sockets:
            # TCPServer's own tables: its stop() removes the handler and closes the socket.
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = Acceptor(sock, self._accepted).remove

    def _accepted(self, connection: socket.socket, address: Any) -> None:
        with contextlib.suppress(OSError):  # the client has already gone: the stream's first read will say so
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = ClientStream(connection, max_buffer_size=self.max_buffer_size,
                              read_chunk_size=self.read_chunk_size or CLIENT_READ_SIZE)
        self.handle_stream(stream, address)

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        if not isinstance(server_conn, HTTP1ServerConnection):
            return delegate
        if self.draining:  # the answer before said Connection: close; a new request is not taken
            server_conn.stream.close()
            return delegate
        self.reading[server_conn] = (time.monotonic() + self.timeouts()[0], HEADERS, request_conn)
        if isinstance(server_conn.stream, ClientStream):
            server_conn.stream.head_answer = self._head_too_large()
        return _Reading(delegate, self, server_conn, request_conn)

    def _head_too_large(self) -> bytes:
        limit = self.conn_params.max_header_size or 65536
        if self._head_answer[0] != limit:
            self._head_answer = (limit, head_too_large_answer(limit))
        return self._head_answer[1]

    def on_close(self, server_conn: object) -> None:
        self.reading.pop(server_conn, None)  # type: ignore[call-overload]
        super().on_close(server_conn)

    def drain(self) -> None:
        """Stop listening and close idle connections now; the others close after their current answer."""
        self.draining = True
        self.stop()
        for conn, (_deadline, what, _request) in list(self.reading.items()):
            if what == HEADERS:
                conn.stream.close()

    async def close_all_connections(self) -> None:
        """Close every connection, and stop the sweep."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await super().close_all_connections()

    def _schedule(self) -> None:
        if self._closing:
            return
        interval = min(1.0, max(0.05, min(self.timeouts()) / 5))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self.sweep)

    def sweep(self) -> None:
        """Act on every connection whose read has outlived its timeout."""
        now = time.monotonic()
        late = [(conn, what, request) for conn, (deadline, what, request) in self.reading.items() if deadline <= now]
        for conn, what, request in late:
            del self.reading[conn]
            if what == BODY:
                log.info("client %s sent its request body too slowly", conn.context)
                if self.on_slow_body is not None and self.on_slow_body(request):
                    self.reading[conn] = (now + CLOSING_GRACE, CLOSING, request)  # 408 is on its way out
                    continue
            conn.stream.close()
        self._schedule()


class _Reading(HTTPMessageDelegate):
    """Passes one request through, moving its connection's deadline from head to body to none."""

    __slots__ = ("_conn", "_delegate", "_request", "_server")

    def __init__(self, delegate: HTTPMessageDelegate, server: SlowClientServer, conn: HTTP1ServerConnection,
                 request: HTTPConnection) -> None:
        self._delegate = delegate
        self._server = server
        self._conn = conn
        self._request = request

    def headers_received(self, start_line: Union[RequestStartLine, ResponseStartLine],
                         headers: Any) -> Optional[Awaitable[None]]:
        stream = self._conn.stream
        if isinstance(stream, ClientStream):
            stream.head_answer = None  # the head is in: a read limit hit from here on is not about it
        self._server.reading[self._conn] = (time.monotonic() + self._server.timeouts()[1], BODY, self._request)
        if isinstance(start_line, RequestStartLine) and start_line.path[:1] != "/":
            start_line = _origin_form(start_line)
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Optional[Awaitable[None]]:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._server.reading.pop(self._conn, None)  # read in full: the handler's own timeouts apply now
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._server.reading.pop(self._conn, None)
        self._delegate.on_connection_close()


def _origin_form(start_line: RequestStartLine) -> RequestStartLine:
    """`POST http://host/v1/... HTTP/1.1` (the absolute form, which RFC 9112 says a server must take) as
    `POST /v1/...`: the routes match paths."""
    try:
        target = urlsplit(start_line.path)
    except ValueError:  # an authority urlsplit cannot read (`http://[foo]/...`): no route matches it as it is
        return start_line
    if target.scheme.lower() not in ("http", "https") or not target.netloc:
        return start_line
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    return RequestStartLine(start_line.method, path, start_line.version)


def _sent_bytes(stream: IOStream) -> int:
    # Tornado counts what it has handed to the socket; it has no public accessor for it.
    return int(getattr(stream, "_total_write_done_index", 0))


async def written(stream: IOStream, flushed: asyncio.Future[None], stalled: float) -> bool:
    """Wait for `flushed` (a write reaching the socket): True once it does, False as soon as the client has
    accepted no bytes at all for `stalled` seconds. A slow client that keeps reading may take longer.

    Not a timeout on the whole write: progress is checked every quarter of `stalled`.
    """
    loop = asyncio.get_running_loop()
    sent, since = _sent_bytes(stream), loop.time()
    while True:
        done, _ = await asyncio.wait((flushed,), timeout=stalled / 4)
        if done:
            flushed.result()  # raises if the client went away meanwhile
            return True
        now = _sent_bytes(stream)
        if now != sent:
            sent, since = now, loop.time()
        elif loop.time() - since >= stalled:
            return False
