"""A fake Azure OpenAI resource: the fake upstream's endpoints behind Azure's URL layout, key and answers.

Classic URLs `/openai/deployments/{deployment}/{path}?api-version=...` and the `/openai/v1/{path}` surface
(Responses included) are served by the same handlers as the OpenAI fake (cues, limits and the store work as
there). Before any handler runs, every request is checked as Azure checks it and refused (and listed in
`refused`) when it is wrong: the `api-version`, the `api-key` header (an `Authorization` header is refused in
key mode), or the bearer token in token mode, and whether the deployment exists (404 DeploymentNotFound).

Azure's own answers: `apim-request-id` on every answer, per-deployment `x-ratelimit-remaining-*` headers
when `quota` is set, a prompt containing `FILTERED_WORD` refused with the content filter's 400 (with its
`innererror`), and a chat stream for a prompt containing `CUT_WORD` that ends with `finish_reason:
"content_filter"`. Every chat stream starts with Azure's `prompt_filter_results` event (no choices).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import uuid
from typing import TYPE_CHECKING, Any, Optional

import orjson
from tornado.iostream import StreamClosedError
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from .fake_media import media_routes
from .fake_responses import response_routes
from .fake_text import text_routes
from .fake_upstream import ChatHandler, CountingServer, Cue, FakeUpstream, Seen, chunk

if TYPE_CHECKING:
    from .harness import Stack

FILTERED_WORD = "forbidden-topic"  # the content filter refuses prompts with it
CUT_WORD = "cut-me-off"  # the content filter cuts the answer to prompts with it
API_VERSION = "2024-10-21"
CLASSIC = ("chat/completions", "completions", "embeddings", "audio/transcriptions", "audio/translations",
           "audio/speech", "images/generations")

SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": {
    **FILTER_RESULTS, "jailbreak": {"filtered": False, "detected": False}}}]
ACCESS_DENIED = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                 "key for an active subscription and use a correct regional API endpoint for your resource.")
NO_DEPLOYMENT = ("The API deployment for this resource does not exist. If you created the deployment within the "
                 "last 5 minutes, please wait a moment and try again.")


def azure_error(code: str, message: str) -> bytes:
    """Azure's own error shape (as its gateway answers it: a code and a message only)."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def content_filter_error() -> bytes:
    """The content filter's 400 for a prompt it refuses."""
    return orjson.dumps({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management "
                   "policy. Please modify your prompt and retry.",
        "type": None, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
            **FILTER_RESULTS, "violence": {"filtered": True, "severity": "medium"},
            "jailbreak": {"filtered": False, "detected": False}}}}})


def rate_limited(retry_after_ms: int, retry_after: int) -> dict[str, Any]:
    """Arguments of a Cue for Azure's 429: both retry headers, and its message."""
    message = (f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {API_VERSION} "
               f"have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
               f"{retry_after} seconds.")
    return {"mode": "status", "status": 429, "body": azure_error("429", message),
            "headers": {"retry-after-ms": str(retry_after_ms), "retry-after": str(retry_after)}}


class FakeAzure(FakeUpstream):
    """One Azure OpenAI resource; `endpoint` is what an `azure` controller's config names."""

    def __init__(self, name: str, deployments: tuple[str, ...], api_key: Optional[str] = None,
                 tokens: Optional[set[str]] = None, api_version: Optional[str] = API_VERSION) -> None:
        super().__init__(name)
        self.default = Cue(mode="stream")  # answer as asked: a stream when the request says stream
        self.deployments = set(deployments)
        self.api_key = api_key  # key mode: this `api-key` and no Authorization
        self.tokens = tokens  # token mode: `Authorization: Bearer` one of these, and no api-key
        self.api_version = api_version  # what classic URLs must say; v1 URLs must say it or nothing
        self.quota: dict[str, str] = {}  # x-ratelimit-remaining-* headers sent on every answer
        self.calls: list[Seen] = []  # every request as it came (full URI), refused ones included
        self.refused: list[str] = []  # why each refused request was refused
        self.refusal_delay = 0.0  # seconds a refusal takes (so that requests sent together are refused together)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls_to(self, path_suffix: str) -> list[Seen]:
        """The requests (refused ones too) whose path, without the query, ends with `path_suffix`."""
        return [seen for seen in self.calls if seen.path.split("?", 1)[0].endswith(path_suffix)]

    def check(self, handler: RequestHandler) -> Optional[tuple[int, bytes, str]]:
        """Azure's checks, in Azure's order: (status, body, why) for a request it refuses, None if it passes."""
        request = handler.request
        headers = request.headers
        if self.api_key is not None:
            if headers.get("api-key") != self.api_key or "Authorization" in headers:
                why = "an Authorization header in key mode" if "Authorization" in headers else "a wrong api-key"
                return 401, azure_error("401", ACCESS_DENIED), why
        elif "api-key" in headers or headers.get("Authorization", "")[7:] not in (self.tokens or set()):
            return 401, azure_error("401", ACCESS_DENIED), "a wrong bearer token"
        versions = [value.decode() for value in request.query_arguments.get("api-version", [])]
        parts = request.path.split("/")  # "", "openai", "deployments", name, ... / "", "openai", "v1", ...
        classic = parts[2] == "deployments"
        wanted = [self.api_version] if self.api_version else []
        if versions != wanted and (classic or versions):
            return 404, azure_error("404", "Resource not found"), f"api-version {versions}"
        deployment = parts[3] if classic else self._model_of(handler)
        if deployment is not None and deployment not in self.deployments:
            return 404, azure_error("DeploymentNotFound", NO_DEPLOYMENT), f"deployment {deployment}"
        return None

    @staticmethod
    def _model_of(handler: RequestHandler) -> Optional[str]:
        """The deployment a v1 request names in its body's `model` (None: it names none)."""
        request = handler.request
        form = request.body_arguments.get("model")
        if form:
            return form[0].decode()
        if request.body and request.headers.get("Content-Type", "").startswith("application/json"):
            with contextlib.suppress(orjson.JSONDecodeError):
                payload = orjson.loads(request.body)
                model = payload.get("model") if isinstance(payload, dict) else None
                return model if isinstance(model, str) else None
        return None

    def start(self, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        classic = [(f"/openai/deployments/[^/]+/{path}", azure(handler)) for path, handler in _table()
                   if path in CLASSIC]
        v1 = [(f"/openai/v1/{path}", azure(handler)) for path, handler in _table()]
        app = Application([(pattern, handler, {"fake": self}) for pattern, handler in classic + v1]
                          + [(r"/.*", AzureUnknown, {"fake": self})], log_function=lambda handler: None)
        sock, self.port = bind_unused_port()
        self._server = CountingServer(app, ssl_options=ssl_context)
        self._server.add_sockets([sock])


def _table() -> list[tuple[str, type[RequestHandler]]]:
    """The OpenAI fake's endpoints as (path below /v1/, handler), chat with Azure's own answers."""
    table: list[tuple[str, type[RequestHandler]]] = [("chat/completions", AzureChatHandler)]
    for pattern, handler in text_routes() + media_routes() + response_routes():
        table.append((pattern.removeprefix("/v1/"), handler))
    return table


def azure(handler: type[RequestHandler]) -> type[RequestHandler]:
    """`handler` behind Azure's checks."""
    return type(f"Azure{handler.__name__}", (AzureChecks, handler), {})


class AzureChecks(RequestHandler):
    """Mixed in before an endpoint's handler: records the call, refuses what Azure refuses, adds its headers."""

    fake: FakeAzure

    async def prepare(self) -> None:
        fake, request = self.fake, self.request
        fake.calls.append(Seen(request.uri or request.path, dict(request.headers), request.body))
        self.set_header("apim-request-id", str(uuid.uuid4()))
        for name, value in fake.quota.items():
            self.set_header(name, value)
        refused = fake.check(self)
        if refused is not None:
            status, body, why = refused
            fake.refused.append(why)
            if fake.refusal_delay:
                await asyncio.sleep(fake.refusal_delay)
            self.set_status(status)
            self.set_header("Content-Type", "application/json")
            self.finish(body)


class AzureUnknown(AzureChecks):
    """Any other path: Azure's 404."""

    def initialize(self, fake: FakeAzure) -> None:
        self.fake = fake

    def prepare(self) -> None:
        self.fake.calls.append(Seen(self.request.uri or self.request.path, dict(self.request.headers), b""))
        self.fake.refused.append(f"unknown path {self.request.path}")
        self.set_status(404)
        self.set_header("Content-Type", "application/json")
        self.finish(azure_error("404", "Resource not found"))


class AzureChatHandler(ChatHandler):
    """Chat completions as Azure answers them: its content filter, and `prompt_filter_results` first."""

    async def post(self) -> None:
        payload = orjson.loads(self.request.body) if self.request.body else {}
        prompt = orjson.dumps(payload.get("messages", [])).decode()
        if FILTERED_WORD in prompt:
            self.fake.requests.append(Seen(self.request.path, dict(self.request.headers), self.request.body))
            self.set_status(400)
            self.set_header("Content-Type", "application/json")
            self.finish(content_filter_error())
            return
        if CUT_WORD in prompt and payload.get("stream"):
            self.fake.requests.append(Seen(self.request.path, dict(self.request.headers), self.request.body))
            with contextlib.suppress(StreamClosedError):
                await self._cut_stream(str(payload.get("model", "")))
            return
        await super().post()

    async def _stream(self, cue: Any, model: str, n: int, payload: dict[str, Any]) -> None:
        self.write(b"data: " + orjson.dumps({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                                            "prompt_filter_results": PROMPT_FILTER_RESULTS}) + b"\n\n")
        await super()._stream(cue, model, n, payload)

    async def _cut_stream(self, model: str) -> None:
        """A stream the filter ends: some text, then `finish_reason: "content_filter"`, then [DONE]."""
        self.set_header("Content-Type", "text/event-stream")
        cut = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [
            {"index": 0, "delta": {}, "finish_reason": "content_filter", "content_filter_results": {
                **FILTER_RESULTS, "violence": {"filtered": True, "severity": "high"}}}]}
        for event in (chunk(model, {"role": "assistant", "content": ""}), chunk(model, {"content": "Once upon"}),
                      b"data: " + orjson.dumps(cut) + b"\n\n", b"data: [DONE]\n\n"):
            self.write(event)
            await self.flush()
        self.finish()


def start_azure(stack: Stack, name: str, deployments: tuple[str, ...], **options: Any) -> FakeAzure:
    """Start a fake Azure resource in `stack` (stopped with it); key mode with a fresh key unless told otherwise."""
    if "tokens" not in options:
        options.setdefault("api_key", secrets.token_hex(16))  # Azure's keys: 32 hex digits, nothing key-like
    fake = FakeAzure(name, deployments, **options)
    stack.loop.call(fake.start)
    stack.fakes.append(fake)
    return fake


def azure_controller(fake: FakeAzure, deployments: dict[str, str], **extra: Any) -> dict[str, Any]:
    """A config entry for an azure controller pointing at `fake`, with its key unless `config` names another."""
    config: dict[str, Any] = {"endpoint": fake.endpoint, "deployments": deployments}
    if fake.api_key is not None:
        config["api_key"] = fake.api_key
    config.update(extra.pop("config", {}))
    return {"type": "azure", "name": fake.name, "config": config, **extra}
