"""What every controller that reaches its upstream over HTTP shares: the pooled transport client, the
configured extra headers and proxy, the headers a call's body needs, and the values to scrub."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional
from urllib.parse import urlsplit

from ..call import Call
from ..config.controllers import ControllerSpec
from ..secret import Secret
from ..transport.client import Client, Transport
from ..transport.http1 import Http1Client
from ..transport.reply import Reply
from ..transport.request import UpstreamRequest
from .base import Controller

JSON_HEADERS = (("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream"))
ACCEPT_ANY = (("Accept", "*/*"),)
MIN_SECRET_HEADER = 8  # shorter header values are not scrubbed from text (they would match everywhere)


def show_url(url: str) -> str:
    """A URL for logs and the admin view: scheme, host, port and path, never its query or credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"


class HttpController(Controller):
    """An upstream at `base_url`; subclasses say which headers are their own (the key) and where a call goes.

    `own` headers (by lower-case name) are sent on every request and win over configured extra headers of
    the same name; `per_request` names are the type's too but change over time (a renewed token), so a
    subclass adds them in `headers_for`, and configured extras of those names are dropped.
    """

    def __init__(self, spec: ControllerSpec, transport: Transport, base_url: str,
                 own: Mapping[str, tuple[str, str]], per_request: Iterable[str] = ()) -> None:
        super().__init__(spec)
        settings = spec.settings
        self.base_url = base_url
        proxy: Optional[Secret] = settings.get("proxy")
        self._proxy: Optional[str] = proxy.reveal() if proxy else None
        extra: dict[str, Secret] = settings.get("headers") or {}
        dropped = frozenset(name.lower() for name in per_request)
        headers = {name.lower(): (name, value.reveal()) for name, value in extra.items()
                   if name.lower() not in dropped}
        headers.update(own)
        self._headers = list(headers.values())
        self._configured = frozenset(headers) | dropped
        self._json_headers = tuple((n, v) for n, v in JSON_HEADERS if n.lower() not in self._configured)
        self._accept_any = tuple((n, v) for n, v in ACCEPT_ANY if n.lower() not in self._configured)
        # A JSON request whose answer may be audio accepts anything.
        self._binary_json = tuple(h for h in self._json_headers if h[0] != "Accept") + self._accept_any
        self._client: Client = Http1Client(base_url, self._headers, transport, self._proxy)

    @property
    def secret_values(self) -> tuple[bytes, ...]:
        """Values to scrub from anything this upstream says: its key and its configured header values."""
        headers: dict[str, Secret] = self.spec.settings.get("headers") or {}
        extra = tuple(v.reveal().encode() for v in headers.values() if len(v.reveal()) >= MIN_SECRET_HEADER)
        return (*self.key_values(), *extra)

    def key_values(self) -> tuple[bytes, ...]:
        """The credentials in use now."""
        return (self.spec.api_key.reveal().encode(),) if self.spec.api_key is not None else ()

    async def close(self) -> None:
        self._client.close()

    def configure_transport(self, transport: Any) -> None:
        if isinstance(transport, Transport) and isinstance(self._client, Http1Client):
            self._client.configure(transport)

    async def request(self, request: UpstreamRequest) -> Reply:
        """Send any request to this upstream, relative to its base URL. Raises `UpstreamError`."""
        return await self._client.request(request)

    def headers_for(self, call: Call, body: bytes) -> tuple[tuple[str, str], ...]:
        """The per-request headers a call's body needs: its Content-Type and what it accepts back."""
        if call.content_type.startswith("application/json") or not body:
            if body:
                return self._binary_json if call.endpoint.binary else self._json_headers
            return self._accept_any
        # A form, with its boundary: the client's own Content-Type.
        if "content-type" in self._configured:
            return self._accept_any
        return (("Content-Type", call.content_type), *self._accept_any)

    def path_for(self, call: Call) -> str:
        """Where the call goes, relative to the base URL."""
        return call.upstream_path

    async def send(self, call: Call, body: bytes) -> Reply:
        return await self._client.request(UpstreamRequest(
            call.endpoint.method, self.path_for(call), body, self.headers_for(call, body), call.stream,
            call.request_id))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["base_url"] = show_url(self.base_url)
        if self._proxy:
            proxy = urlsplit(self._proxy)
            info["proxy"] = f"{proxy.scheme}://{proxy.hostname}:{proxy.port or ''}"
        return info
