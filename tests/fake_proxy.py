"""A forward HTTP proxy on loopback, on raw sockets: CONNECT tunnels, and absolute-form requests it rewrites to
origin form; it records what passed through it and can demand credentials or refuse tunnels."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit


@dataclass
class Passed:
    """One request the proxy handled."""

    method: str
    target: str
    headers: dict[str, str]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> Optional[tuple[str, str, dict[str, str]]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


class FakeProxy:
    """Start with `await start()` inside the event loop."""

    def __init__(self, authorization: Optional[str] = None, refuse: int = 0) -> None:
        self.authorization = authorization  # the Proxy-Authorization value it insists on, if any
        self.refuse = refuse  # answer every CONNECT with this status
        self.seen: list[Passed] = []
        self.connections = 0
        self.port = 0
        self._server: Optional[asyncio.Server] = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        upstream: Optional[asyncio.StreamWriter] = None
        try:
            while (request := await _read_head(reader)) is not None:
                method, target, headers = request
                self.seen.append(Passed(method, target, headers))
                if self.authorization and headers.get("proxy-authorization") != self.authorization:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n"
                                 b"Content-Length: 0\r\n\r\n")
                    break
                if method == "CONNECT":
                    if self.refuse:
                        writer.write(b"HTTP/1.1 %d Refused\r\nContent-Length: 0\r\n\r\n" % self.refuse)
                        break
                    host, _, port = target.rpartition(":")
                    up_reader, upstream = await asyncio.open_connection(host, int(port))
                    self._writers.add(upstream)
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self._spawn(_pipe(up_reader, writer))
                    await _pipe(reader, upstream)
                    return
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if upstream is None:  # one connection to the target per client connection, kept alive
                    parts = urlsplit(target)
                    up_reader, upstream = await asyncio.open_connection(parts.hostname, parts.port or 80)
                    self._writers.add(upstream)
                    self._spawn(_pipe(up_reader, writer))
                parts = urlsplit(target)
                origin_form = parts.path + (f"?{parts.query}" if parts.query else "")
                kept = "".join(f"{name}: {value}\r\n" for name, value in headers.items()
                               if name not in ("proxy-authorization", "proxy-connection"))
                upstream.write(f"{method} {origin_form} HTTP/1.1\r\n{kept}\r\n".encode("latin-1") + body)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
