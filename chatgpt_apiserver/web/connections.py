"""Client connections: HTTP/1.1 parsed by llhttp (httptools) on the event loop's transports, for Tornado's
Application and handlers.

Tornado's own server reads a request through an IOStream and a chain of coroutines (head, then body, then
the answer's end), and parses the head in Python: on this machine that was more than half the CPU of a bare
Tornado request (README, Performance). Here each connection is an asyncio Protocol: what arrives is fed to
llhttp, and its callbacks drive the same `HTTPMessageDelegate` Tornado's server drives (the Application's
router, the handlers, `stream_request_body`). The connection is also each request's `HTTPConnection`: the
answer is framed as Tornado frames it (Content-Length, or chunked for HTTP/1.1, keep-alive as HTTP/1.0 asks).

Also here, for every client:
- timeouts by sweep. The server notes a deadline when a read starts, and one sweep, a fraction of the
  shortest timeout apart, acts on every connection past its deadline: an idle one (or one still sending its
  head) is closed; one whose body is late gets 408 from its handler, then is closed. The timeouts are read
  at each request, so a reload changes them;
- a request head over the limit gets 431, and a request llhttp cannot parse gets 400, both in OpenAI's
  error shape;
- requests pipelined on one connection are answered in order: one is handled at a time, and reading pauses
  while the next waits;
- a drain closes idle connections at once and the others after their answer;
- `written` cuts off a client that takes no bytes of its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Optional, Union, cast
from urllib.parse import urlsplit

import httptools
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPInputError,
    HTTPServerRequest,
    RequestStartLine,
    ResponseStartLine,
    _normalize_header,
)
from tornado.iostream import StreamClosedError
from tornado.log import app_log
from tornado.web import Application

from ..errors import error_body
from .accept import Acceptor

log = logging.getLogger("chatgpt_apiserver.connections")

Timeouts = Callable[[], tuple[float, float]]  # (idle or headers, body) in seconds
SlowBody = Callable[["ClientConnection"], bool]  # asks the request's handler to answer 408; False if it could not
HEADERS, BODY, CLOSING = "headers", "body", "closing"
CLOSING_GRACE = 5.0  # seconds a client gets to read a last answer (408, 431, 400) before its connection is closed
CHUNK_FRAMING = 32  # bytes of a chunk's size line and line ends allowed beside max_header_size (for trailers)
HEAD_LINE_OVERHEAD = 4  # ": " and CRLF of a header line, as counted against max_header_size
CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"


def head_too_large_answer(limit: int) -> bytes:
    """The raw 431 sent when a request head outgrows `limit` bytes (there is no request to answer it through)."""
    body = error_body(f"The request head (request line and headers) is over the limit of {limit} bytes.",
                      "invalid_request_error", None, "request_header_fields_too_large")
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


_BAD_REQUEST_BODY = error_body("The request is not valid HTTP/1.1: its request line, a header, or the framing of "
                               "its body (Content-Length, Transfer-Encoding) is malformed.",
                               "invalid_request_error", None, "malformed_http_request")
MALFORMED_REQUEST_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                            b"Connection: close\r\n\r\n%s" % (len(_BAD_REQUEST_BODY), _BAD_REQUEST_BODY))


class _Peer:
    """What Tornado's HTTPServerRequest reads of a connection's context: the client's address."""

    __slots__ = ("protocol", "remote_ip")

    def __init__(self, address: Any) -> None:
        self.remote_ip = address[0] if isinstance(address, tuple) and address else "0.0.0.0"  # noqa: S104 (a Unix socket, as Tornado fakes it)
        self.protocol = "http"

    def __str__(self) -> str:
        return str(self.remote_ip)


class ClientServer:
    """Accepts client connections (through an Acceptor: EMFILE back-off) and serves them to `app`."""

    def __init__(self, app: Application, *, max_header_size: int, max_body_size: int,
                 timeouts: Timeouts, on_slow_body: Optional[SlowBody] = None) -> None:
        self.app = app
        self.max_header_size = max_header_size
        # The cap on a body before its handler sets its own (a request refused on its head, or a route without
        # a body): set_max_body_size raises it for the request it admits.
        self.max_body_size = max_body_size
        self.timeouts = timeouts
        self.on_slow_body = on_slow_body
        self.draining = False
        self.connections: set[ClientConnection] = set()
        # A connection is here while it waits for a request's head or body, or to close: (deadline, for what).
        self.reading: dict[ClientConnection, tuple[float, str]] = {}
        self._acceptors: list[Acceptor] = []
        self._opening: set[asyncio.Task[Any]] = set()
        self._head_answer = (-1, b"")
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._schedule()

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        """Listen on `sockets` (bound and listening already)."""
        for sock in sockets:
            sock.setblocking(False)
            self._acceptors.append(Acceptor(sock, self._accepted))

    def _accepted(self, sock: socket.socket, address: Any) -> None:
        with contextlib.suppress(OSError):  # the client has already gone: the transport's first read says so
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._open(sock, address))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _open(self, sock: socket.socket, address: Any) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: ClientConnection(self, address), sock)
        except OSError as error:
            log.debug("client %s gone before its connection opened: %s", address, error)
            sock.close()

    def head_too_large(self) -> bytes:
        """The 431 for the current `max_header_size`."""
        limit = self.max_header_size
        if self._head_answer[0] != limit:
            self._head_answer = (limit, head_too_large_answer(limit))
        return self._head_answer[1]

    def stop(self) -> None:
        """Stop accepting: the listening sockets close."""
        for acceptor in self._acceptors:
            acceptor.remove()
            acceptor.sock.close()
        self._acceptors.clear()

    def drain(self) -> None:
        """Stop listening and close idle connections now; the others close after their current answer. A
        connection whose request head has begun to arrive is not idle: that request is answered."""
        self.draining = True
        self.stop()
        for conn, (_deadline, what) in list(self.reading.items()):
            if what == HEADERS and not conn.head_begun():
                conn.close()

    def quiet(self) -> bool:
        """No request is arriving or being answered on any connection (what a drain waits for)."""
        return not any((conn._active or conn.head_begun()) and not conn._discarding for conn in self.connections)

    async def close_all_connections(self) -> None:
        """Close every connection, and stop the sweep."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.close()
        for _ in range(100):  # each closes on its next loop turn
            if not self.connections and not self._opening:
                return
            await asyncio.sleep(0.01)

    def _schedule(self) -> None:
        if self._closing:
            return
        interval = min(1.0, max(0.05, min(self.timeouts()) / 5))
        self._sweeper = self._loop.call_later(interval, self.sweep)

    def sweep(self) -> None:
        """Act on every connection whose read has outlived its timeout."""
        now = time.monotonic()
        late = [(conn, what) for conn, (deadline, what) in self.reading.items() if deadline <= now]
        for conn, what in late:
            del self.reading[conn]
            if what == BODY:
                log.info("client %s sent its request body too slowly", conn.context)
                if self.on_slow_body is not None and self.on_slow_body(conn):
                    self.reading[conn] = (now + CLOSING_GRACE, CLOSING)  # 408 is on its way out
                    continue
            conn.close()
        self._schedule()


def declares_body(headers: HTTPHeaders) -> bool:
    """Whether a request's head says a body follows (chunked, or a Content-Length other than 0)."""
    fields = headers._as_list
    return "Transfer-Encoding" in fields or fields.get("Content-Length", ["0"]) != ["0"]


def headers_of(fields: dict[str, list[str]]) -> HTTPHeaders:
    """HTTPHeaders holding `fields` (names as HTTPHeaders keys them, values checked), built directly:
    HTTPHeaders() goes through MutableMapping.update, and add() through two regexes per line."""
    headers = HTTPHeaders.__new__(HTTPHeaders)
    headers._as_list = fields
    headers._combined_cache = {}
    return headers


_NAMES: dict[bytes, str] = {}  # a header name as sent -> as HTTPHeaders keys it; up to NAMES_KEPT
NAMES_KEPT = 512


def _header_name(raw: bytes) -> str:
    name = _normalize_header(raw.decode("latin1"))
    if len(_NAMES) >= NAMES_KEPT:  # emptied when full: a client's made-up names cannot crowd out the usual ones
        _NAMES.clear()
    _NAMES[raw] = name
    return name


class _HeadTooLarge(Exception):
    """A request head outgrew max_header_size."""


# What llhttp's callbacks hand over, held when they cannot be acted on yet: a request head (start line, headers),
# a piece of body, the end of a request, or bytes that do not parse.
_Event = tuple[str, Any]


class ClientConnection(asyncio.Protocol, HTTPConnection):
    """One client's TCP connection: its requests parsed by llhttp, passed to the application one at a time, and
    each answer framed and written. Tornado's handlers see it as `request.connection`."""

    transport: asyncio.Transport

    def __init__(self, server: ClientServer, address: Any) -> None:
        self.server = server
        self.context = _Peer(address)
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self._close_callback: Optional[Callable[[], None]] = None
        # The head being parsed: its target, header lines, and size so far.
        self._url = b""
        self._lines: list[tuple[bytes, bytes]] = []
        self._in_head = True  # between requests, or inside a head: counts towards max_header_size
        self._raw_head = 0  # bytes fed while in a head (llhttp holds a header line until it is whole)
        # Bytes fed after a head that were not body (chunk sizes, trailers), and the chunks so far.
        self._framing = 0
        self._chunks = 0
        self._upgrade: Optional[tuple[RequestStartLine, HTTPHeaders]] = None  # a head to read again without Upgrade
        # Events waiting for the request before them to be answered (or for the handler's prepare()).
        self._held: Optional[list[_Event]] = None
        self._waiting = False  # the application asked to wait before the body is passed on
        self._continue = False  # "Expect: 100-continue" is answered once that wait is over
        self._discarding = False  # a last answer is out: what the client still sends is dropped
        # The request being served.
        self._delegate: Any = None
        self._active = False
        self._read_done = True
        self._write_done = True
        self._request_line: Optional[RequestStartLine] = None
        self._request_headers: Optional[HTTPHeaders] = None
        self._disconnect = False
        self._bodiless = True  # the request declares no body
        self._chunking = False
        self._remaining: Optional[int] = None  # bytes of the answer still due by its Content-Length
        self._max_body = 0
        self._body_size = 0
        # Writes: bytes handed to the transport, futures waiting for its buffer to empty.
        self._sent_total = 0
        self._flushing: list[asyncio.Future[None]] = []
        self._paused_writing = False
        self._done: Optional[asyncio.Future[None]] = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's does not subclass it)
        transport.set_write_buffer_limits(high=0)  # pause_writing whenever bytes wait; resume once all are out
        server = self.server
        if server._closing:
            self.close()
            return
        server.connections.add(self)
        self._await_head()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        server = self.server
        server.connections.discard(self)
        server.reading.pop(self, None)
        self._held = None
        for future in self._flushing:
            if not future.done():
                future.set_exception(StreamClosedError())
                future.exception()  # (retrieved: a write nobody awaits must not log)
        self._flushing.clear()
        if not self._active:
            return
        self._active = False
        if not self._read_done:
            delegate, self._delegate = self._delegate, None
            if delegate is not None:
                self._call(delegate.on_connection_close)
        elif not self._write_done:
            callback, self._close_callback = self._close_callback, None
            if callback is not None:
                self._call(callback)
        self._delegate = None

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        flushing, self._flushing = self._flushing, []
        for future in flushing:
            if not future.done():
                future.set_result(None)
        if self._discarding and not self.closed:  # closing softly: the last answer has left
            self.server.reading[self] = (time.monotonic() + CLOSING_GRACE, CLOSING)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._in_head:
            self._raw_head += len(data)
        else:
            self._framing += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._upgrade is not None:  # a request with a body that asked for an upgrade: read as it is
                self._read_again(data[upgrade.args[0]:])
                return
            # An upgrade (or CONNECT) is not served: its request is answered, and the connection closes after.
            self._event(("error", None))
            return
        except httptools.HttpParserError as error:
            cause = error.__context__  # what a callback raised, if one did
            if isinstance(cause, _HeadTooLarge):
                self._event(("error", self.server.head_too_large()))
            elif cause is not None:
                app_log.error("Uncaught exception", exc_info=cause)
                self.close()
            else:
                log.info("malformed HTTP request from %s: %s", self.context, error)
                self._event(("error", MALFORMED_REQUEST_ANSWER))
            return
        limit = self.server.max_header_size
        if self._in_head:
            if self._raw_head > limit:
                self._event(("error", self.server.head_too_large()))  # a head still coming, already over the limit
        elif self._framing > limit + CHUNK_FRAMING * self._chunks:
            self._event(("error", self.server.head_too_large()))  # trailers (or chunk extensions) past the limit

    def eof_received(self) -> Optional[bool]:
        return False  # the transport closes itself; connection_lost tells the request

    # llhttp's callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._lines = []
        self._in_head = True

    # The head's size is checked once it is whole, and by the bytes fed while it is not (`data_received`).

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._lines.append((name, value))
        # else a trailer of a chunked body: not passed on (Tornado drops them too), counted as framing

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._framing = self._chunks = 0
        parser = self.parser
        url = self._url.decode("latin1")
        if url[:1] != "/":
            url = _origin_form(url)
        start_line = RequestStartLine(parser.get_method().decode("latin1"), url, "HTTP/" + parser.get_http_version())
        lines: dict[str, list[str]] = {}
        headers = headers_of(lines)  # llhttp has checked every name and value
        size = len(self._url) + HEAD_LINE_OVERHEAD * len(self._lines)
        names = _NAMES
        for raw_name, raw_value in self._lines:
            size += len(raw_name) + len(raw_value)
            name = names.get(raw_name) or _header_name(raw_name)
            value = raw_value.decode("latin1").strip(" \t")
            values = lines.get(name)
            if values is None:
                lines[name] = [value]
            else:
                values.append(value)
        self._lines = []
        if size > self.server.max_header_size:
            raise _HeadTooLarge
        if parser.should_upgrade() and start_line.method != "CONNECT" and declares_body(headers):
            # llhttp would take no body and hand the rest of the connection over (curl --http2 on http://
            # asks for h2c with every request). The upgrade is not served: the request is read again without it.
            self._upgrade = (start_line, headers)
            return
        if self._held is None and not self._active and not self._discarding:
            self._head(start_line, headers)
        else:
            self._event(("head", (start_line, headers)))

    def on_body(self, body: bytes) -> None:
        self._framing -= len(body)
        if self._held is None and not self._waiting and not self._discarding:
            self._body(body)
        else:
            self._event(("body", body))

    def on_message_complete(self) -> None:
        self._in_head = True
        self._raw_head = 0
        self._url = b""
        if self._upgrade is not None:
            return  # (read again: `_read_again`)
        if self._held is None and not self._waiting and not self._discarding:
            self._end()
        else:
            self._event(("end", None))

    def _read_again(self, rest: bytes) -> None:
        """The request that asked for an upgrade, fed to a fresh parser without its Upgrade header, with what
        followed its head (its body, and any request after it)."""
        assert self._upgrade is not None
        start_line, headers = self._upgrade
        self._upgrade = None
        head = "".join([f"{start_line.method} {start_line.path} {start_line.version}\r\n",
                        *(f"{name}: {value}\r\n" for name, value in headers.get_all() if name != "Upgrade"), "\r\n"])
        self.parser = httptools.HttpRequestParser(self)
        self._in_head, self._raw_head = True, 0
        self.data_received(head.encode("latin1") + rest)

    # Events, in order: acted on now, or held while a request before them is answered

    def _event(self, event: _Event) -> None:
        if self._discarding:
            return
        if self._held is not None:
            self._held.append(event)
            return
        if self._must_wait(event[0]):
            self._held = [event]
            self.transport.pause_reading()  # what is held stays within one read
            return
        self._act(event)

    def _must_wait(self, kind: str) -> bool:
        """A head waits for the answer before it; the rest of a request, for the application to take it. An
        error is the current request's while its body is read, else the next one's."""
        if kind == "head":
            return self._active
        if kind == "error":
            return self._waiting or (self._active and self._read_done)
        return self._waiting

    def _act(self, event: _Event) -> None:
        kind, value = event
        if kind == "body":
            self._body(value)
        elif kind == "head":
            self._head(*value)
        elif kind == "end":
            self._end()
        else:
            self._fail(value)

    def _replay(self) -> None:
        """Act on held events while nothing makes them wait; resume reading once none is left."""
        while self._held:
            if self._discarding:  # a last answer is out: what waited behind it is not served
                self._held = None
                return
            if self._must_wait(self._held[0][0]):
                return
            self._act(self._held.pop(0))
        if self._held is not None:
            self._held = None
            if not self._discarding and not self.closed:
                self.transport.resume_reading()

    def _head(self, start_line: RequestStartLine, headers: HTTPHeaders) -> None:
        server = self.server
        self._active = True
        self._read_done = self._write_done = False
        self._bodiless = not declares_body(headers)
        self._request_line, self._request_headers = start_line, headers
        self._disconnect = not _can_keep_alive(start_line, headers)
        self._chunking = False
        self._remaining = None
        self._max_body = server.max_body_size
        self._body_size = 0
        server.reading[self] = (time.monotonic() + server.timeouts()[1], BODY)
        try:
            # What Tornado's routing delegate does, minus that delegate: the request, its handler, its head.
            request = HTTPServerRequest(connection=self, server_connection=self, start_line=start_line,
                                        headers=headers)
            delegate = self._delegate = server.app.find_handler(request)
            waited = delegate.headers_received(start_line, headers)
        except HTTPInputError as error:  # no Host header (HTTP/1.1), or a bad or repeated one
            log.info("malformed HTTP request from %s: %s", self.context, error)
            self._active, self._delegate = False, None
            self._fail(MALFORMED_REQUEST_ANSWER)
            return
        except Exception:
            app_log.error("Uncaught exception", exc_info=True)
            self.close()
            return
        if self.closed:
            return
        self._continue = headers._as_list.get("Expect") == ["100-continue"]
        if waited is not None:
            self._wait_for(waited)
        else:
            self._go_on()

    def _go_on(self) -> None:
        """The application has taken the head: a client that waits for it before sending its body is told to go on."""
        if self._continue and not self._write_done and not self.closed:
            self._write(CONTINUE)
        self._continue = False

    def _wait_for(self, waited: Awaitable[None]) -> None:
        """Hold the body (and what follows) until the application's awaitable is done."""
        self._waiting = True

        def done(_: object) -> None:
            self._waiting = False
            self._go_on()
            self._replay()

        asyncio.ensure_future(waited).add_done_callback(done)

    def _body(self, chunk: bytes) -> None:
        if self._write_done or self._delegate is None:
            return  # answered already: the connection closes after that answer
        self._body_size += len(chunk)
        if self._body_size > self._max_body:
            log.info("request body from %s over the cap of %d bytes", self.context, self._max_body)
            self._fail(MALFORMED_REQUEST_ANSWER)
            return
        waited = self._call(self._delegate.data_received, chunk)
        if waited is not None and not self.closed:
            self._wait_for(waited)

    def _end(self) -> None:
        self._read_done = True
        if self._discarding:
            return  # closing: its deadline stays
        self.server.reading.pop(self, None)  # read in full: the handler's own timeouts apply now
        if not self._write_done:
            if self._delegate is not None:
                self._call(self._delegate.finish)
        else:
            self._request_done()

    def _fail(self, answer: Optional[bytes]) -> None:
        """A request that cannot be read: its answer (if any) goes out, then the connection closes."""
        if answer is None:  # an upgrade: the request before it is answered, then the connection closes
            if self._active:
                self._disconnect = True
            else:
                self.close_softly()
            self._discarding = True
            return
        self._write(answer)
        self.close_softly()
        if self._active:  # the request being read fails mid-way: its handler is told the client is gone
            self._active = False
            delegate, self._delegate = self._delegate, None
            if delegate is not None:
                self._call(delegate.on_connection_close)

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        """Tornado's rule for the application's callbacks: an exception is logged and the connection closes."""
        try:
            return method(*args)
        except Exception:
            app_log.error("Uncaught exception", exc_info=True)
            self.close()
            return None

    # HTTPConnection: the answer

    def set_close_callback(self, callback: Optional[Callable[[], None]]) -> None:
        self._close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        """The body size limit of the request being read (Tornado's HTTP1Connection has the same)."""
        self._max_body = max_body_size

    def close_after_answer(self) -> None:
        """Close this connection once the current answer is out."""
        self._disconnect = True

    def write_headers(self, start_line: Union[RequestStartLine, ResponseStartLine], headers: HTTPHeaders,
                      chunk: Optional[bytes] = None) -> asyncio.Future[None]:
        assert isinstance(start_line, ResponseStartLine)
        request = self._request_line
        assert request is not None and self._request_headers is not None
        code = start_line.code
        fields = headers._as_list
        length = fields.get("Content-Length")
        self._chunking = (request.version == "HTTP/1.1" and request.method != "HEAD" and code not in (204, 304)
                          and (code < 100 or code >= 200) and length is None)
        if fields.get("Connection") == ["close"]:
            self._disconnect = True
        if request.version == "HTTP/1.1":
            if self._disconnect:
                headers["Connection"] = "close"
        elif ",".join(self._request_headers._as_list.get("Connection", ())).lower() == "keep-alive":
            headers["Connection"] = "Keep-Alive"
        if self._chunking:
            headers["Transfer-Encoding"] = "chunked"
        if request.method == "HEAD" or code == 304:
            self._remaining = 0
        else:
            self._remaining = int(length[0]) if length else None
        lines = [f"{name}: {value}\r\n" for name, values in fields.items() for value in values]
        head = f"HTTP/1.1 {code} {start_line.reason}\r\n{''.join(lines)}\r\n"
        if head.count("\n") != len(lines) + 2 or head.count("\r") != len(lines) + 2:  # only the line ends
            raise ValueError(f"Illegal characters (CR or LF) in the head of an answer: {head!r}")
        data = head.encode("latin1")
        if chunk:
            data += self._framed(chunk)
        return self._write(data)

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        return self._write(self._framed(chunk))

    def _framed(self, chunk: bytes) -> bytes:
        if self._remaining is not None:
            self._remaining -= len(chunk)
            if self._remaining < 0:
                self.close()  # stop further framing errors
                raise ValueError("Tried to write more data than Content-Length")
        if self._chunking and chunk:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def finish(self) -> None:
        if self._remaining and not self.closed:
            self.close()
            raise ValueError(f"Tried to write {self._remaining} bytes less than Content-Length")
        if self._chunking:
            self._write(b"0\r\n\r\n")
        self._write_done = True
        if not self._read_done and not self._bodiless:
            # Answered before the body was read: what is left of it is not read, and the connection closes.
            self._disconnect = True
        self._close_callback = None
        if self._disconnect:
            # Its delegate is told when the connection closes if it still waits for its body, as in Tornado.
            self._active = not self._read_done
            self.close_softly()
        elif self._read_done:
            self._request_done()

    def _request_done(self) -> None:
        self._active = False
        self._delegate = None
        self._close_callback = None
        self._request_line = self._request_headers = None
        if self.closed or self._discarding:
            return
        self._await_head()
        if self._held is not None:
            # On the next turn: this runs inside the handler's finish(), before its on_finish().
            asyncio.get_running_loop().call_soon(self._replay)

    def _write(self, data: bytes) -> asyncio.Future[None]:
        if self.closed:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_exception(StreamClosedError())
            future.exception()
            return future
        self.transport.write(data)
        self._sent_total += len(data)
        if not self._paused_writing:
            done = self._done
            if done is None:
                done = self._done = asyncio.get_running_loop().create_future()
                done.set_result(None)
            return done
        future = asyncio.get_running_loop().create_future()
        self._flushing.append(future)
        return future

    # Closing

    def close_softly(self) -> None:
        """Close once what is written is out, reading (and dropping) what the client still sends meanwhile, so
        that closing does not reset the last answer away; at most CLOSING_GRACE seconds."""
        self._discarding = True
        if self.closed:
            return
        self.transport.resume_reading()
        with contextlib.suppress(OSError, RuntimeError):
            self.transport.write_eof()  # (after what is still buffered)
        if self._paused_writing:  # the answer is still leaving: the grace starts once it has (resume_writing)
            self.server.reading.pop(self, None)
            return
        self.server.reading[self] = (time.monotonic() + CLOSING_GRACE, CLOSING)

    def close(self) -> None:
        """Close now: what is written and not yet sent is dropped (Tornado's stream.close())."""
        self._discarding = True  # nothing parsed from here on is acted on
        if not self.closed:
            self.closed = True  # at once: connection_lost comes on the next turn of the loop
            self.transport.abort()

    def _await_head(self) -> None:
        """The next request head is due within the idle timeout (read at each request: a reload changes it)."""
        self.server.reading[self] = (time.monotonic() + self.server.timeouts()[0], HEADERS)

    def head_begun(self) -> bool:
        """Whether a request head is arriving (or waits, held, behind the request being answered)."""
        return bool(self._raw_head or self._url or self._lines or self._held)

    def sent_bytes(self) -> int:
        """Bytes of answers that have left for the client (handed to the kernel)."""
        if self.closed:
            return self._sent_total
        return self._sent_total - self.transport.get_write_buffer_size()


def _can_keep_alive(start_line: RequestStartLine, headers: HTTPHeaders) -> bool:
    """Tornado's rule: HTTP/1.1 unless the client says close; HTTP/1.0 only when it asks, with a framed body."""
    lines = headers._as_list
    said = lines.get("Connection")
    connection = ",".join(said).lower() if said else None
    if start_line.version == "HTTP/1.1":
        return connection != "close"
    if "Content-Length" in lines or "chunked" in ",".join(lines.get("Transfer-Encoding", ())).lower() or \
            start_line.method in ("HEAD", "GET"):
        return connection == "keep-alive"
    return False


def _origin_form(target: str) -> str:
    """`http://host/v1/...` (the absolute form, which RFC 9112 says a server must take) as `/v1/...`: the routes
    match paths."""
    try:
        parts = urlsplit(target)
    except ValueError:  # an authority urlsplit cannot read (`http://[foo]/...`): no route matches it as it is
        return target
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return target
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


async def written(connection: ClientConnection, flushed: asyncio.Future[None], stalled: float) -> bool:
    """Wait for `flushed` (a write reaching the socket): True once it does, False as soon as the client has
    accepted no bytes at all for `stalled` seconds. A slow client that keeps reading may take longer.

    Not a timeout on the whole write: progress is checked every quarter of `stalled`.
    """
    loop = asyncio.get_running_loop()
    sent, since = connection.sent_bytes(), loop.time()
    while True:
        done, _ = await asyncio.wait((flushed,), timeout=stalled / 4)
        if done:
            flushed.result()  # raises if the client went away meanwhile
            return True
        now = connection.sent_bytes()
        if now != sent:
            sent, since = now, loop.time()
        elif loop.time() - since >= stalled:
            return False
