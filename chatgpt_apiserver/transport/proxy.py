"""Reaching an upstream through an http:// proxy: a CONNECT tunnel for https upstreams (plain-HTTP ones are sent
to the proxy in absolute form), and the proxy's credentials, which never leave this module in clear."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import unquote, urlsplit

import httptools

from .connection import HEAD_LIMIT
from .reply import UpstreamError


@dataclass(frozen=True)
class Proxy:
    """An http:// proxy: where it listens, and the Proxy-Authorization its URL's credentials make."""

    host: str
    port: int
    authorization: Optional[str] = field(default=None, repr=False)  # "Basic ..." from the URL's user:password

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """A proxy from its URL (checked when the config was read)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http:// proxy URL, got {parts.scheme or 'no'} scheme")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(parts.hostname, parts.port or 80, authorization)

    @property
    def header(self) -> str:
        """The Proxy-Authorization header line, or nothing."""
        return f"Proxy-Authorization: {self.authorization}\r\n" if self.authorization else ""


class _StatusOnly:
    """Parser callbacks that only note where the head ends."""

    def __init__(self) -> None:
        self.done = False

    def on_headers_complete(self) -> None:
        self.done = True


class _Handshake(asyncio.Protocol):
    """Sends CONNECT and waits for the proxy's answer; the tunnel is then handed to TLS."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.parser = httptools.HttpResponseParser(_StatusOnly())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > HEAD_LIMIT:
                self._fail("protocol", f"the proxy's answer to CONNECT ran over {HEAD_LIMIT} bytes")
            return
        try:
            self.parser.feed_data(bytes(self.buffer[:end + 4]))
        except httptools.HttpParserError as exc:
            self._fail("protocol", f"the proxy sent a malformed answer to CONNECT ({exc})")
            return
        self.transport.pause_reading()  # what follows belongs to TLS
        self.answer.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._fail("connection", "the proxy closed the connection before answering CONNECT")

    def _fail(self, kind: str, message: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(UpstreamError(kind, message))


async def open_tunnel(proxy: Proxy, authority: str) -> asyncio.Transport:
    """A connection to the proxy, tunnelled to `authority` (host:port) with CONNECT."""
    loop = asyncio.get_running_loop()
    request = (f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{proxy.header}\r\n").encode("latin-1")
    transport, handshake = await loop.create_connection(lambda: _Handshake(request), proxy.host, proxy.port)
    try:
        status = await handshake.answer
    except BaseException:
        transport.close()
        raise
    if status != 200:
        transport.close()
        if status == 407:
            raise UpstreamError("connection", "the proxy wants credentials (407); put them in the proxy URL")
        raise UpstreamError("connection", f"the proxy refused the tunnel to the upstream ({status})")
    return transport
