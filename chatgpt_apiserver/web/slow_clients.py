"""Slow clients: connections that idle too long, send their headers or body too slowly, or stop taking the
answer, are cut off.

Tornado can do this itself (`idle_connection_timeout`, `body_timeout`), but it arms a timer and a chain of
futures on every read: about 25 µs per request at concurrency 1 here (see README, Performance). Instead,
the server notes a deadline when a read starts and one sweep, a fraction of the shortest timeout apart,
closes every connection past its deadline. The timeouts are read from the settings at each request, so a
reload changes them. On the write side, `written` watches a write that did not reach the socket at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Optional, Union

from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPConnection, HTTPMessageDelegate, RequestStartLine, ResponseStartLine
from tornado.iostream import IOStream

log = logging.getLogger("chatgpt_apiserver.slow_clients")

Timeouts = Callable[[], tuple[float, float]]  # (idle or headers, body) in seconds
HEADERS, BODY = "headers", "body"


class SlowClientServer(HTTPServer):
    """Tornado's HTTPServer, with the idle, header and body read timeouts enforced by a periodic sweep."""

    def initialize(self, *args: Any, timeouts: Timeouts, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        # Tornado puts a one-hour timer on every header read when given no idle timeout; the sweep does it.
        self.conn_params.header_timeout = None
        self.timeouts = timeouts
        # A connection is here while it waits for a request's headers or body: (deadline, what it waits for).
        self.reading: dict[HTTP1ServerConnection, tuple[float, str]] = {}
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._schedule()

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        if isinstance(server_conn, HTTP1ServerConnection):
            self.reading[server_conn] = (time.monotonic() + self.timeouts()[0], HEADERS)
            return _Reading(delegate, self, server_conn)
        return delegate

    def on_close(self, server_conn: object) -> None:
        self.reading.pop(server_conn, None)  # type: ignore[call-overload]
        super().on_close(server_conn)

    def stop(self) -> None:
        super().stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _schedule(self) -> None:
        interval = min(1.0, max(0.05, min(self.timeouts()) / 5))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self.sweep)

    def sweep(self) -> None:
        """Close every connection whose read has outlived its timeout."""
        now = time.monotonic()
        late = [(conn, what) for conn, (deadline, what) in self.reading.items() if deadline <= now]
        for conn, what in late:
            del self.reading[conn]
            if what == BODY:
                log.info("client %s sent its request body too slowly; connection closed", conn.context)
            conn.stream.close()
        self._schedule()


class _Reading(HTTPMessageDelegate):
    """Passes one request through, moving its connection's deadline from headers to body to none."""

    __slots__ = ("_conn", "_delegate", "_server")

    def __init__(self, delegate: HTTPMessageDelegate, server: SlowClientServer, conn: HTTP1ServerConnection) -> None:
        self._delegate = delegate
        self._server = server
        self._conn = conn

    def headers_received(self, start_line: Union[RequestStartLine, ResponseStartLine],
                         headers: Any) -> Optional[Awaitable[None]]:
        self._server.reading[self._conn] = (time.monotonic() + self._server.timeouts()[1], BODY)
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Optional[Awaitable[None]]:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._server.reading.pop(self._conn, None)  # read in full: the handler's own timeouts apply now
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._server.reading.pop(self._conn, None)
        self._delegate.on_connection_close()


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
