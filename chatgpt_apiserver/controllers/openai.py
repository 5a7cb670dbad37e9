"""An OpenAI-compatible upstream over a pooled keep-alive aiohttp session."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

import aiohttp

from ..call import Call
from ..config.controllers import ControllerSpec
from ..secret import Secret
from ..transport.http1 import Pool
from ..transport.reply import Reply, UpstreamError
from .base import Controller

log = logging.getLogger("chatgpt_apiserver.upstream")


@dataclass(frozen=True)
class Transport:
    """Connection-level limits shared by every upstream controller."""

    connect_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_connections: int = 1000
    keepalive_timeout: float = 30.0


def _describe_error(exc: BaseException) -> tuple[str, str]:
    """(kind, message) for a transport exception, with no URL credentials or keys in the text."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout", "timed out waiting for the upstream"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return "connection", f"cannot connect to the upstream ({reason})"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return "connection", "cannot connect to the proxy"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection", "the upstream closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection", "the upstream connection broke while sending the body"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "protocol", f"the upstream sent an invalid response ({exc.status})"
    return "connection", f"upstream connection failed ({type(exc).__name__})"


class AiohttpReply(Reply):
    """A reply read from an aiohttp response."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(*_describe_error(exc)) from None

    async def read_chunk(self) -> bytes:
        try:
            return await self._response.content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(*_describe_error(exc)) from None

    def close(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class UpstreamController(Controller):
    """Relays chat completions to `base_url` with the controller's own key."""

    def __init__(self, spec: ControllerSpec, transport: Transport) -> None:
        super().__init__(spec)
        settings = spec.settings
        self.base_url: str = settings["base_url"]
        self._url = self.base_url + "/chat/completions"
        proxy: Optional[Secret] = settings.get("proxy")
        self._proxy: Optional[str] = proxy.reveal() if proxy else None
        self._transport = transport
        assert spec.api_key is not None
        self._key: Secret = spec.api_key
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        extra: dict[str, Secret] = settings.get("headers") or {}
        headers.update({name: value.reveal() for name, value in extra.items()})
        headers["Authorization"] = "Bearer " + self._key.reveal()
        if settings.get("organization"):
            headers["OpenAI-Organization"] = settings["organization"]
        if settings.get("project"):
            headers["OpenAI-Project"] = settings["project"]
        self._headers = headers
        self._session: Optional[aiohttp.ClientSession] = None
        # Without a proxy, requests go through the lean keep-alive client; with one, through aiohttp.
        self._pool: Optional[Pool] = None
        parts = urlsplit(self.base_url)
        host, tls = parts.hostname or "", parts.scheme == "https"
        default_port = 443 if tls else 80
        self._origin = (host, parts.port or default_port, tls)
        host_header = host if not parts.port or parts.port == default_port else f"{host}:{parts.port}"
        lines = [f"POST {parts.path}/chat/completions HTTP/1.1", f"Host: {host_header}",
                 "Accept-Encoding: gzip, deflate", "Connection: keep-alive"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")

    @property
    def secret_values(self) -> tuple[bytes, ...]:
        """Values to scrub from anything this upstream says: its key and its header values."""
        headers: dict[str, Secret] = self.spec.settings.get("headers") or {}
        extra = tuple(v.reveal().encode() for v in headers.values() if len(v.reveal()) >= 8)
        return (self._key.reveal().encode(), *extra)

    async def start(self) -> None:
        if not self._proxy:
            host, port, tls = self._origin
            transport = self._transport
            self._pool = Pool(host, port, tls, transport.max_connections, transport.keepalive_timeout,
                              transport.connect_timeout, transport.idle_timeout)
            return
        connector = aiohttp.TCPConnector(
            limit=self._transport.max_connections,
            limit_per_host=0,
            keepalive_timeout=self._transport.keepalive_timeout,
            ttl_dns_cache=300,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._transport.connect_timeout,
            sock_read=self._transport.idle_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self._headers, trust_env=False,
            skip_auto_headers=("User-Agent",),
        )

    def configure_transport(self, transport: Any) -> None:
        if not isinstance(transport, Transport):
            return
        self._transport = transport
        pool = self._pool
        if pool is not None:
            pool.limit, pool.keepalive = transport.max_connections, transport.keepalive_timeout
            pool.connect_timeout, pool.idle_timeout = transport.connect_timeout, transport.idle_timeout

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, call: Call, body: bytes) -> Reply:
        if self._pool is None and self._session is None:
            await self.start()
        if self._pool is not None:
            return await self._pool.request(b"".join((
                self._head, b"X-Request-Id: ", call.request_id.encode(), b"\r\nContent-Length: ",
                b"%d" % len(body), b"\r\n\r\n", body)))
        assert self._session is not None
        try:
            response = await self._session.post(
                self._url, data=body, headers={"X-Request-Id": call.request_id}, proxy=self._proxy,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(*_describe_error(exc)) from None
        return AiohttpReply(response)

    async def discover_models(self) -> list[str]:
        import openai

        http_client = openai.DefaultAsyncHttpxClient(proxy=self._proxy) if self._proxy else None
        client = openai.AsyncOpenAI(
            api_key=self._key.reveal(), base_url=self.base_url, max_retries=0, timeout=10.0,
            organization=self.spec.settings.get("organization"), project=self.spec.settings.get("project"),
            default_headers={k: v for k, v in self._headers.items() if k not in ("Authorization", "Content-Type")},
            http_client=http_client,
        )
        try:
            page = await client.models.list()
            return [model.id for model in page.data]
        finally:
            await client.close()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        parts = urlsplit(self.base_url)
        info["base_url"] = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"
        if self._proxy:
            proxy = urlsplit(self._proxy)
            info["proxy"] = f"{proxy.scheme}://{proxy.hostname}:{proxy.port or ''}"
        return info

