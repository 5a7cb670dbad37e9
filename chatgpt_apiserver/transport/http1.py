"""HTTP/1.1 to one upstream over pooled keep-alive connections, parsed by llhttp (httptools).

Every request goes this way, direct or through a proxy, streaming or not. The reply hands out the body as it
arrives, undoing gzip and deflate in bounded pieces; `read()` stops at `max_upstream_body_size`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .client import Client, Transport
from .codings import Decoder, decoder_for
from .connection import Connection, Headers
from .pool import Pool
from .proxy import Proxy
from .reply import Piece, Reply, UpstreamError, joined
from .request import Origin, UpstreamRequest, header_block
from .tls import client_context

_ACCEPT_CODED = b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
_ACCEPT_PLAIN = b"Accept-Encoding: identity\r\nConnection: keep-alive\r\n"  # streams: no compressor may hold events
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
TARGETS_KEPT = 256  # request lines kept ready, per upstream


class Http1Reply(Reply):
    """An answer read from a pooled connection; closing returns the connection when it is reusable."""

    __slots__ = ("_connection", "_decoder", "_limit", "_pool", "headers", "status")

    def __init__(self, pool: Pool, connection: Connection, decoder: Optional[Decoder], limit: int) -> None:
        self._pool = pool
        self._connection: Optional[Connection] = connection
        self._decoder = decoder
        self._limit = limit
        self.status = connection.status
        self.headers: Headers = connection.headers

    async def read(self) -> bytes:
        pieces = await self.read_pieces()
        return joined(pieces)

    async def read_pieces(self) -> list[Piece]:
        limit = self._limit
        if self._decoder is None:
            length = int(self.headers.get("content-length") or 0)  # llhttp checked it is a number
            if length > limit:
                self.close()
                raise UpstreamError("protocol", f"the upstream's answer is {length} bytes, over "
                                                f"max_upstream_body_size ({limit})")
            connection = self._connection
            if connection is None:
                return []
            try:
                return await connection.whole(limit)  # no wake-up and no copy per piece
            finally:
                self.close()
        pieces: list[Piece] = []
        size = 0
        while True:
            piece = await self.read_chunk()
            if not piece:
                return pieces
            size += len(piece)
            if size > limit:
                self.close()
                how = "inflates" if self._decoder is not None else "runs"
                raise UpstreamError("protocol", f"the upstream's answer {how} past max_upstream_body_size ({limit} "
                                                "bytes)")
            pieces.append(piece)

    async def read_chunk(self) -> bytes:
        connection = self._connection
        if connection is None:
            return b""
        decoder = self._decoder
        if decoder is None:
            piece = await connection.next_piece()
            if not piece:
                self.close()  # the whole body is in: the connection goes back to the pool at once
            return piece
        while True:
            piece = decoder.pull()
            if piece:
                return piece
            raw = await connection.next_piece()
            if not raw:
                self.close()
                decoder.finish()
                return b""
            decoder.feed(raw)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)

    def end(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection, drain=True)


class Http1Client(Client):
    """Requests to one base URL, with the controller's own headers on each."""

    def __init__(self, base_url: str, headers: Sequence[tuple[str, str]], transport: Transport,
                 proxy_url: Optional[str] = None) -> None:
        self.origin = origin = Origin.parse(base_url)
        proxy = Proxy.parse(proxy_url) if proxy_url else None
        # A plain-HTTP upstream behind a proxy is asked in absolute form; an https one through a tunnel.
        self._absolute = proxy is not None and not origin.tls
        fixed = f"Host: {origin.authority}\r\n{proxy.header if proxy and self._absolute else ''}"
        self._fixed = fixed.encode("latin-1") + header_block(tuple(headers))
        self._targets: dict[tuple[str, str], bytes] = {}  # (method, path) -> request line
        self._limit = transport.max_body_size
        self.pool = Pool(origin, proxy, client_context() if origin.tls else None, transport.max_connections,
                         transport.keepalive_timeout, transport.connect_timeout, transport.idle_timeout)

    def configure(self, transport: Transport) -> None:
        """A reload changed the transport limits: they apply to the next requests and connections."""
        self._limit = transport.max_body_size
        pool = self.pool
        pool.limit, pool.keepalive = transport.max_connections, transport.keepalive_timeout
        pool.connect_timeout, pool.idle_timeout = transport.connect_timeout, transport.idle_timeout

    def encode(self, request: UpstreamRequest) -> bytes:
        """The request's bytes: head and body."""
        key = (request.method, request.path)
        line = self._targets.get(key)
        if line is None:
            if request.method in ("HEAD", "CONNECT"):  # answers without the body their head announces
                raise ValueError(f"the transport does not send {request.method} requests")
            origin = self.origin
            target = origin.absolute(request.path) if self._absolute else origin.target(request.path)
            line = f"{request.method} {target} HTTP/1.1\r\n".encode("latin-1")
            if len(self._targets) >= TARGETS_KEPT:
                self._targets.clear()
            self._targets[key] = line
        body = request.body
        parts = [line, self._fixed, _ACCEPT_PLAIN if request.stream else _ACCEPT_CODED]
        if request.request_id:
            parts += (b"X-Request-Id: ", request.request_id.encode("latin-1"), b"\r\n")
        if request.headers:
            parts.append(header_block(request.headers))
        if body or request.method in _WITH_BODY:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts += (b"\r\n", body)
        return b"".join(parts)

    async def request(self, request: UpstreamRequest) -> Reply:
        connection = await self.pool.exchange(self.encode(request))
        headers = connection.headers
        try:
            decoder = decoder_for(headers.get("transfer-encoding"), headers.get("content-encoding"))
        except UpstreamError:
            self.pool.release(connection)
            raise
        return Http1Reply(self.pool, connection, decoder, self._limit)

    def close(self) -> None:
        self.pool.close()
