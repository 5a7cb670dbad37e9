"""An OpenAI-compatible upstream, reached over the pooled HTTP/1.1 transport (directly or via a proxy)."""

from __future__ import annotations

import logging
from typing import Any, Optional
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..call import Call
from ..config.controllers import ControllerSpec
from ..secret import Secret
from ..transport.client import Client, Transport
from ..transport.http1 import Http1Client
from ..transport.reply import Reply
from ..transport.request import UpstreamRequest
from .base import Controller

log = logging.getLogger("chatgpt_apiserver.upstream")

__all__ = ["Transport", "UpstreamController"]

JSON_HEADERS = (("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream"))
ACCEPT_ANY = (("Accept", "*/*"),)


class UpstreamController(Controller):
    """Relays requests to `base_url` with the controller's own key."""

    def __init__(self, spec: ControllerSpec, transport: Transport) -> None:
        super().__init__(spec)
        settings = spec.settings
        self.base_url: str = settings["base_url"]
        proxy: Optional[Secret] = settings.get("proxy")
        self._proxy: Optional[str] = proxy.reveal() if proxy else None
        assert spec.api_key is not None
        self._key: Secret = spec.api_key
        # The controller's headers on every request, by lower-case name: its key and project win over
        # anything of the same name among the configured extra headers.
        extra: dict[str, Secret] = settings.get("headers") or {}
        headers = {name.lower(): (name, value.reveal()) for name, value in extra.items()}
        headers["authorization"] = ("Authorization", "Bearer " + self._key.reveal())
        if settings.get("organization"):
            headers["openai-organization"] = ("OpenAI-Organization", settings["organization"])
        if settings.get("project"):
            headers["openai-project"] = ("OpenAI-Project", settings["project"])
        self._headers = list(headers.values())
        self._json_headers = tuple((n, v) for n, v in JSON_HEADERS if n.lower() not in headers)
        self._configured = frozenset(headers)
        self._client: Client = Http1Client(self.base_url, self._headers, transport, self._proxy)

    @property
    def secret_values(self) -> tuple[bytes, ...]:
        """Values to scrub from anything this upstream says: its key and its header values."""
        headers: dict[str, Secret] = self.spec.settings.get("headers") or {}
        extra = tuple(v.reveal().encode() for v in headers.values() if len(v.reveal()) >= 8)
        return (self._key.reveal().encode(), *extra)

    async def close(self) -> None:
        self._client.close()

    def configure_transport(self, transport: Any) -> None:
        if isinstance(transport, Transport) and isinstance(self._client, Http1Client):
            self._client.configure(transport)

    async def request(self, request: UpstreamRequest) -> Reply:
        """Send any request to this upstream, relative to its base URL. Raises `UpstreamError`."""
        return await self._client.request(request)

    async def send(self, call: Call, body: bytes) -> Reply:
        endpoint = call.endpoint
        if call.content_type.startswith("application/json") or not body:
            headers = self._json_headers if body else ACCEPT_ANY
        else:  # a form, with its boundary: the client's own Content-Type
            headers = (("Content-Type", call.content_type), *ACCEPT_ANY)
        if endpoint.binary:
            headers = tuple(h for h in headers if h[0] != "Accept") + ACCEPT_ANY
        headers = tuple(h for h in headers if h[0].lower() not in self._configured)
        return await self._client.request(UpstreamRequest(
            endpoint.method, call.upstream_path, body, headers, call.stream, call.request_id))

    async def discover_models(self) -> list[str]:
        import openai

        # The SDK joins paths onto a base URL without a query; the query goes on every request instead.
        parts = urlsplit(self.base_url)
        base_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        http_client = openai.DefaultAsyncHttpxClient(proxy=self._proxy) if self._proxy else None
        client = openai.AsyncOpenAI(
            api_key=self._key.reveal(), base_url=base_url, max_retries=0, timeout=10.0,
            organization=self.spec.settings.get("organization"), project=self.spec.settings.get("project"),
            default_headers={name: value for name, value in self._headers if name.lower() != "authorization"},
            default_query=dict(parse_qsl(parts.query)) or None, http_client=http_client,
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
