"""An Azure OpenAI resource: its deployments over the classic deployment URLs, or over Azure's /openai/v1.

Classic: `{endpoint}/openai/deployments/{deployment}/{path}?api-version={api_version}`; the deployment is
picked by the call's model and the client's body goes as it came (Azure ignores its `model`). v1:
`{endpoint}/openai/v1/{path}`, with the deployment name as the body's `model`. The key goes in `api-key`,
never in `Authorization`; or an Entra ID token from `bearer_token_file`, as `Authorization: Bearer`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

from ..call import Call
from ..config.controllers import ControllerSpec
from ..endpoints.base import Endpoint
from ..secret import Secret
from ..transport.client import Transport
from ..transport.reply import Reply, UpstreamError
from .base import Verdict
from .http import HttpController, show_url
from .token_file import TokenFile

# What each surface serves, by endpoint route (endpoints/catalog.py).
CLASSIC_ROUTES = frozenset((
    "chat_completions", "completions", "embeddings", "audio_transcriptions", "audio_translations", "audio_speech",
    "images_generations"))
V1_ROUTES = frozenset((
    "chat_completions", "embeddings", "responses", "responses_get", "responses_delete", "responses_cancel",
    "responses_input_items", "audio_transcriptions", "audio_translations", "audio_speech", "images_generations",
    "images_edits"))
MISSING_DEPLOYMENT = b"DeploymentNotFound"


def _without_api_version(path: str) -> str:
    """`path` without any `api-version` of the client's query."""
    path_only, mark, query = path.partition("?")
    if not mark or "api-version" not in query.lower():
        return path
    kept = [pair for pair in query.split("&") if pair.split("=", 1)[0].lower() != "api-version"]
    return f"{path_only}?{'&'.join(kept)}" if kept else path_only


class AzureController(HttpController):
    """One Azure OpenAI resource (one region); its deployments are its models."""

    def __init__(self, spec: ControllerSpec, transport: Transport) -> None:
        settings = spec.settings
        self.endpoint: str = settings["endpoint"]
        self.api: str = settings.get("api", "classic")
        self.api_version: Optional[str] = settings.get("api_version")
        self.classic = self.api == "classic"
        base = self.endpoint + ("/openai" if self.classic else "/openai/v1")
        if self.api_version:
            base += "?api-version=" + self.api_version
        self._token: Optional[TokenFile] = None
        self._auth: tuple[tuple[str, str], ...] = ()
        self._auth_for: Optional[Secret] = None
        own: dict[str, tuple[str, str]] = {}
        if settings.get("bearer_token_file"):
            self._token = TokenFile(Path(settings["bearer_token_file"]), spec.name)
        else:
            assert spec.api_key is not None
            own["api-key"] = ("api-key", spec.api_key.reveal())
        # The credential's headers are the type's own: configured extras of those names are never sent.
        super().__init__(spec, transport, base, own, per_request=("api-key", "authorization"))
        self.key_renews = self._token is not None
        self._routes = CLASSIC_ROUTES if self.classic else V1_ROUTES
        self._prefixes = {model: f"/deployments/{deployment}" for model, deployment in (self.models or {}).items()}

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint.route in self._routes

    def upstream_model(self, model: str) -> str:
        # Classic URLs name the deployment in the path: the body's model stays as the client sent it.
        return model if self.classic else super().upstream_model(model)

    def classify(self, status: int, body: bytes) -> Verdict:
        if status == 404 and MISSING_DEPLOYMENT in body:
            return Verdict.NO_MODEL
        if status == 404 and self.classic:
            # The gateway builds every classic URL (no client-given id in it): a 404 means a wrong endpoint,
            # front path or api_version, which another controller may not share.
            return Verdict.FAULT
        return super().classify(status, body)

    def path_for(self, call: Call) -> str:
        path = _without_api_version(call.upstream_path)  # the controller's own api_version is the one sent
        if not self.classic:
            return path
        prefix = self._prefixes.get(call.model)
        if prefix is None:  # routing only sends the models of its deployments; never guess one
            raise UpstreamError("protocol", f"controller {self.name} has no deployment for model {call.model!r}")
        return prefix + path

    def headers_for(self, call: Call, body: bytes) -> tuple[tuple[str, str], ...]:
        headers = super().headers_for(call, body)
        if self._token is None:
            return headers
        token = self._token.current()
        if token is None:
            raise UpstreamError("connection", f"no bearer token to send: {self._token.path} has none yet",
                                connecting=True)
        if token is not self._auth_for:  # a new token (TokenFile makes a new Secret only when it changes)
            self._auth_for, self._auth = token, (("Authorization", "Bearer " + token.reveal()),)
        return headers + self._auth

    def key_values(self) -> tuple[bytes, ...]:
        if self._token is not None:
            token = self._token.token
            return (token.reveal().encode(),) if token is not None else ()
        return super().key_values()

    async def send(self, call: Call, body: bytes) -> Reply:
        # The token this request carries: headers_for reads the same one, with no await in between.
        sent_with = self._token.current() if self._token is not None else None
        reply = await super().send(call, body)
        if reply.status != 401 or self._token is None:
            return reply
        self._token.refresh(force=True)
        if self._token.token is not sent_with and self._token.token is not None:
            # The agent renewed the token since this request was sent (this read found it, or a request
            # refused before this one did): read the refusal (to keep the connection) and try once more,
            # on this same controller.
            with contextlib.suppress(UpstreamError):
                await reply.read()
            reply.close()
            reply = await super().send(call, body)
        return reply

    async def discover_models(self) -> list[str]:
        return sorted(self.models or ())  # the deployments are declared: nothing to ask

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["endpoint"] = show_url(self.endpoint)
        info["api"] = self.api
        if self.api_version:
            info["api_version"] = self.api_version
        info["credential"] = "bearer token file" if self._token is not None else "api-key"
        return info
