"""An in-process controller that answers with generated text: for demos, load tests and client CI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Optional

import orjson

from ..call import Call
from ..config.controllers import ControllerSpec
from ..transport.reply import Reply
from .base import Controller

DEFAULT_REPLY = (
    "This is a demo answer from chatgpt-apiserver's mock controller; no model was called. "
    "Configure an openai controller with a real API key to get real answers. "
)
DEFAULT_MAX_TOKENS = 32


def estimate_prompt_tokens(payload: dict[str, Any]) -> int:
    """A cheap prompt-size estimate: a quarter of the message text's length, at least 1."""
    size = 0
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            size += len(content)
        elif isinstance(content, list):
            size += sum(len(part.get("text", "")) for part in content if isinstance(part, dict))
    return max(1, size // 4)


class MockReply(Reply):
    """A reply produced in memory: a JSON body, or SSE events paced like a model."""

    def __init__(self, body: Optional[bytes], events: Optional[AsyncIterator[bytes]], stream: bool) -> None:
        self.status = 200
        self.headers = {"content-type": "text/event-stream" if stream else "application/json"}
        self._body = body
        self._events = events

    async def read(self) -> bytes:
        if self._body is not None:
            return self._body
        return b"".join([chunk async for chunk in self._events]) if self._events else b""

    async def read_chunk(self) -> bytes:
        if self._events is None:
            body, self._body = self._body or b"", b""
            return body
        try:
            return await self._events.__anext__()
        except StopAsyncIteration:
            return b""

    def close(self) -> None:
        self._events = None


class MockController(Controller):
    """Generates words from a fixed text at `tokens_per_second`, after `first_token_delay`."""

    def __init__(self, spec: ControllerSpec) -> None:
        super().__init__(spec)
        settings = spec.settings
        self.rate = float(settings.get("tokens_per_second", 50.0))
        self.first_delay = float(settings.get("first_token_delay", 0.05))
        self.default_max = int(settings.get("max_tokens", DEFAULT_MAX_TOKENS))
        self.words = [word + " " for word in (settings.get("reply") or DEFAULT_REPLY).split()]

    def _tokens(self, payload: dict[str, Any]) -> tuple[list[str], str]:
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens") or self.default_max
        count = min(limit, len(self.words)) if limit > 0 else 1
        finish = "length" if limit < len(self.words) else "stop"
        return self.words[:count], finish

    async def send(self, call: Call, body: bytes) -> Reply:
        payload = call.payload
        n = payload.get("n") or 1
        tokens, finish = self._tokens(payload)
        prompt = estimate_prompt_tokens(payload)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(tokens) * n,
                 "total_tokens": prompt + len(tokens) * n}
        ident = "chatcmpl-mock-" + call.request_id
        created = int(time.time())
        if call.stream:
            options = payload.get("stream_options") or {}
            wants_usage = options.get("include_usage") or call.inject_usage
            events = self._events(ident, created, call.model, n, tokens, finish, usage if wants_usage else None)
            return MockReply(None, events, stream=True)
        await asyncio.sleep(self.first_delay + len(tokens) / self.rate)
        choices = [{"index": i, "message": {"role": "assistant", "content": "".join(tokens).rstrip(), "refusal": None},
                    "logprobs": None, "finish_reason": finish} for i in range(n)]
        answer = {"id": ident, "object": "chat.completion", "created": created, "model": call.model,
                  "choices": choices, "usage": usage, "system_fingerprint": "mock"}
        return MockReply(orjson.dumps(answer), None, stream=False)

    async def _events(self, ident: str, created: int, model: str, n: int, tokens: list[str], finish: str,
                      usage: Optional[dict[str, int]]) -> AsyncIterator[bytes]:
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "mock"}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n"

        await asyncio.sleep(self.first_delay)
        yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None} for i in range(n)])
        pause = 1.0 / self.rate
        for token in tokens:
            await asyncio.sleep(pause)
            yield event([{"index": i, "delta": {"content": token}, "logprobs": None, "finish_reason": None}
                         for i in range(n)])
        yield event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish} for i in range(n)])
        if usage is not None:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    async def discover_models(self) -> list[str]:
        return sorted(self.models) if self.models else ["mock-gpt"]
