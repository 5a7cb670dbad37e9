"""Keep-alive connections to one upstream (directly or through a proxy), at most `limit` open at once.

Idle connections are reused newest first, and a reaper closes those idle longer than the keep-alive timeout.
A request whose reused connection turns out dead before any byte of the answer (the upstream closed it as
the request went out: the idle-timeout race of every server) is sent once more on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from typing import Optional

from .connection import Connection
from .proxy import Proxy, open_tunnel
from .reply import UpstreamError
from .request import Origin

log = logging.getLogger("chatgpt_apiserver.transport")

REAP_SLACK = 0.05  # seconds: connections that expire this close together are closed by one reaper run


def _reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {error.verify_message}"
    return error.strerror or getattr(error, "reason", None) or type(error).__name__


class Pool:
    """Connections to one origin, opened directly or through `proxy`; each carries one exchange at a time."""

    def __init__(self, origin: Origin, proxy: Optional[Proxy], tls: Optional[ssl.SSLContext], limit: int,
                 keepalive: float, connect_timeout: float, idle_timeout: float) -> None:
        self.origin = origin
        self.proxy = proxy
        self.tls = tls if origin.tls else None
        self.limit = limit
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.idle: deque[Connection] = deque()  # oldest first
        self.open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._reaper: Optional[asyncio.TimerHandle] = None
        self._closed = False

    async def exchange(self, data: bytes) -> Connection:
        """Send one request and wait for its answer's head; the connection then belongs to the caller."""
        connection = await self._acquire(fresh=False)
        try:
            await connection.send(data)
            return connection
        except UpstreamError:
            self.release(connection)
            if not connection.reused or connection.answered:
                raise
        except BaseException:
            self.release(connection)
            raise
        log.debug("a reused connection to %s was closed before it answered; sending again on a fresh one",
                  self.origin.authority)
        connection = await self._acquire(fresh=True)
        try:
            await connection.send(data)
        except BaseException:
            self.release(connection)
            raise
        return connection

    async def _acquire(self, fresh: bool) -> Connection:
        loop = asyncio.get_running_loop()
        while True:
            if not fresh:
                now = loop.time()
                while self.idle:
                    connection = self.idle.pop()  # the most recently used is the likeliest to be alive
                    if not connection.closed and now - connection.idle_since < self.keepalive:
                        connection.reused = True
                        return connection
                    self._discard(connection)
            if self.open < self.limit:
                break
            if fresh and self.idle:
                self._discard(self.idle.popleft())  # make room for the fresh connection
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled before it could act: pass the turn on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
        self.open += 1
        try:
            return await asyncio.wait_for(self._connect(), self.connect_timeout)
        except TimeoutError:
            self._closed_one()
            raise UpstreamError("timeout", "timed out connecting to the upstream", connecting=True) from None
        except OSError as error:
            self._closed_one()
            # TLS is spoken with the upstream only (through a tunnel, if there is a proxy: plain HTTP).
            where = "the proxy" if self.proxy is not None and not isinstance(error, ssl.SSLError) else "the upstream"
            raise UpstreamError("connection", f"cannot connect to {where} ({_reason(error)})",
                                connecting=True) from None
        except UpstreamError as error:  # the proxy refused the tunnel
            self._closed_one()
            error.connecting = True
            raise
        except BaseException:
            self._closed_one()
            raise

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        origin, proxy = self.origin, self.proxy
        connection = Connection(self.idle_timeout, loop)
        if proxy is None:
            await loop.create_connection(lambda: connection, origin.host, origin.port, ssl=self.tls,
                                         server_hostname=origin.host if self.tls else None)
        elif self.tls is None:
            await loop.create_connection(lambda: connection, proxy.host, proxy.port)  # absolute-form requests
        else:
            tunnel = await open_tunnel(proxy, f"{origin.host}:{origin.port}")
            try:
                secured = await loop.start_tls(tunnel, connection, self.tls, server_hostname=origin.host)
            except BaseException:
                tunnel.close()
                raise
            assert secured is not None
            connection.connection_made(secured)
        return connection

    def release(self, connection: Connection, drain: bool = False) -> None:
        """Take a connection back: pooled if it is clean, closed otherwise.

        With `drain`, an answer whose reader is done before its last bytes came (the chunked end after an SSE
        stream's [DONE]) is read to its end in the background, and its connection then pooled.
        """
        if connection.reusable and not self._closed:
            connection.idle_since = connection.loop.time()
            self.idle.append(connection)
            if self._reaper is None:
                self._schedule_reaper()
            self._wake_one()
        elif not (drain and not self._closed and connection.drain(self.release)):
            self._discard(connection)

    def _schedule_reaper(self) -> None:
        oldest = self.idle[0].idle_since
        loop = asyncio.get_running_loop()
        self._reaper = loop.call_at(oldest + self.keepalive + REAP_SLACK, self._reap)

    def _reap(self) -> None:
        """Close every connection idle longer than the keep-alive timeout, and those the upstream closed."""
        self._reaper = None
        expired = asyncio.get_running_loop().time() - self.keepalive
        alive: deque[Connection] = deque()
        for connection in self.idle:
            if connection.closed or connection.idle_since <= expired:
                self._discard(connection)
            else:
                alive.append(connection)
        self.idle = alive
        if alive:
            self._schedule_reaper()

    def _discard(self, connection: Connection) -> None:
        connection.close()
        connection.forget()
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
        """Close every idle connection and stop the reaper; busy ones close when their replies do."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        while self.idle:
            self._discard(self.idle.pop())
