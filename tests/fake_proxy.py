"""A minimal forward HTTP proxy on loopback that records what passed through it."""

from __future__ import annotations

from typing import Optional

from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler


class ForwardHandler(RequestHandler):
    """Forwards an absolute-URI request to its target, buffering the answer."""

    def initialize(self, proxy: FakeProxy) -> None:
        self.proxy = proxy

    async def _forward(self) -> None:
        self.proxy.seen.append((self.request.method or "", self.request.uri or ""))
        headers = {k: v for k, v in self.request.headers.items()
                   if k.lower() not in ("proxy-connection", "connection", "host", "proxy-authorization")}
        response = await AsyncHTTPClient().fetch(
            self.request.uri or "", method=self.request.method or "GET", headers=headers,
            body=self.request.body if self.request.method == "POST" else None, raise_error=False)
        self.set_status(response.code)
        self.set_header("Content-Type", response.headers.get("Content-Type", "application/json"))
        self.finish(response.body)

    async def post(self, *args: str) -> None:
        await self._forward()

    async def get(self, *args: str) -> None:
        await self._forward()


class FakeProxy:
    """Start with `start()` inside the event loop."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.port = 0
        self._server: Optional[HTTPServer] = None

    def start(self) -> None:
        sock, self.port = bind_unused_port()
        self._server = HTTPServer(Application([(r"(.*)", ForwardHandler, {"proxy": self})],
                                              log_function=lambda handler: None))
        self._server.add_sockets([sock])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
