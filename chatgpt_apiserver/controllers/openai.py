"""An OpenAI-compatible upstream, reached over the pooled HTTP/1.1 transport (directly or via a proxy)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..config.controllers import ControllerSpec
from ..secret import Secret
from ..transport.client import Transport
from .http import HttpController

__all__ = ["Transport", "UpstreamController"]


class UpstreamController(HttpController):
    """Relays requests to `base_url` with the controller's own key, as `Authorization: Bearer`."""

    def __init__(self, spec: ControllerSpec, transport: Transport) -> None:
        assert spec.api_key is not None
        self._key: Secret = spec.api_key
        settings = spec.settings
        # Its key and project win over anything of the same name among the configured extra headers.
        own = {"authorization": ("Authorization", "Bearer " + self._key.reveal())}
        if settings.get("organization"):
            own["openai-organization"] = ("OpenAI-Organization", settings["organization"])
        if settings.get("project"):
            own["openai-project"] = ("OpenAI-Project", settings["project"])
        super().__init__(spec, transport, settings["base_url"], own)

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
