"""An in-process controller that answers with generated text: for demos, load tests and client CI.

It serves chat, legacy completions, embeddings, moderations, responses and conversations; audio and
images are left to real upstreams (the gateway answers 404 for them when only mocks are configured).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Optional

import orjson

from ..call import Call
from ..config.controllers import ControllerSpec
from ..endpoints.base import Endpoint
from ..endpoints.catalog import first_count
from ..transport.reply import Reply
from . import mock_answers as answers
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

    def __init__(self, body: Optional[bytes], events: Optional[AsyncIterator[bytes]], stream: bool,
                 status: int = 200) -> None:
        self.status = status
        self.headers = {"content-type": "text/event-stream" if stream else "application/json",
                        "x-request-id": "req_mock" + os.urandom(8).hex()}
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


def _json(document: Any, status: int = 200) -> MockReply:
    return MockReply(orjson.dumps(document), None, stream=False, status=status)


# What a mock without declared models says it serves (it answers any name).
MOCK_MODELS = ("gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini", "mock-gpt", "omni-moderation-latest",
               "text-embedding-3-large", "text-embedding-3-small")
SERVED = frozenset((
    "chat_completions", "completions", "embeddings", "moderations", "responses", "responses_get", "responses_delete",
    "responses_cancel", "responses_input_items", "responses_input_tokens", "responses_compact", "conversations",
    "conversations_get", "conversations_update", "conversations_delete", "conversation_items",
    "conversation_items_create", "conversation_item", "conversation_item_delete"))


class MockController(Controller):
    """Generates words from a fixed text at `tokens_per_second`, after `first_token_delay`."""

    def __init__(self, spec: ControllerSpec) -> None:
        super().__init__(spec)
        settings = spec.settings
        self.rate = float(settings.get("tokens_per_second", 50.0))
        self.first_delay = float(settings.get("first_token_delay", 0.05))
        self.default_max = int(settings.get("max_tokens", DEFAULT_MAX_TOKENS))
        self.words = [word + " " for word in (settings.get("reply") or DEFAULT_REPLY).split()]
        self.project = answers.Project()

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint.route in SERVED

    def _tokens(self, payload: dict[str, Any], *fields: str) -> tuple[list[str], str]:
        limit = first_count(payload, *fields) or self.default_max
        count = min(limit, len(self.words))
        finish = "length" if limit < len(self.words) else "stop"
        return self.words[:count], finish

    def _usage(self, prompt: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def send(self, call: Call, body: bytes) -> Reply:
        route = call.endpoint.route
        if route not in SERVED:
            return _json({"error": {"message": f"The mock controller does not serve {call.endpoint.public_path}.",
                                    "type": "invalid_request_error", "param": None, "code": "unknown_url"}}, 404)
        if route == "chat_completions":
            return await self._chat(call)
        if route == "completions":
            return await self._completions(call)
        if route == "embeddings":
            return _json(answers.embeddings(call.payload))
        if route == "moderations":
            return _json(answers.moderation(call.payload))
        if route.startswith("response"):
            return await self._responses(call, route)
        return self._conversations(call, route)

    async def _chat(self, call: Call) -> Reply:
        payload = call.payload
        n = first_count(payload, "n") or 1
        tokens, finish = self._tokens(payload, "max_completion_tokens", "max_tokens")
        usage = self._usage(estimate_prompt_tokens(payload), len(tokens) * n)
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

    async def _completions(self, call: Call) -> Reply:
        payload = call.payload
        n = first_count(payload, "n") or 1
        tokens, finish = self._tokens(payload, "max_tokens")
        usage = self._usage(max(1, len(str(payload.get("prompt", ""))) // 4), len(tokens) * n)
        if not call.stream:
            await asyncio.sleep(self.first_delay + len(tokens) / self.rate)
            return _json(answers.completion(call.model, "".join(tokens).rstrip(), n, usage, finish))
        options = payload.get("stream_options") or {}
        wants_usage = options.get("include_usage") or call.inject_usage

        async def events() -> AsyncIterator[bytes]:
            ident = "cmpl-mock-" + call.request_id
            await asyncio.sleep(self.first_delay)
            for token in tokens:
                yield answers.completion_chunk(ident, call.model, token, n)
                await asyncio.sleep(1.0 / self.rate)
            yield answers.completion_chunk(ident, call.model, "", n, finish)
            if wants_usage:
                yield b"data: " + orjson.dumps({"id": ident, "object": "text_completion", "model": call.model,
                                                "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return MockReply(None, events(), stream=True)

    async def _responses(self, call: Call, route: str) -> Reply:
        project = self.project
        payload = call.payload
        found = call.endpoint.pattern.fullmatch(call.upstream_path.partition("?")[0])
        ident = found.group("id") if found is not None and "id" in found.groupdict() else ""
        if ident and ident not in project.responses:
            return _json(answers.not_found("Response", ident), 404)
        if route == "responses_get":
            return _json(project.responses[ident])
        if route == "responses_delete":
            project.responses.pop(ident)
            return _json({"id": ident, "object": "response.deleted", "deleted": True})
        if route == "responses_cancel":
            return _json({**project.responses[ident], "status": "cancelled"})
        if route == "responses_input_items":
            return _json({"object": "list", "data": project.inputs.get(ident, []), "has_more": False})
        previous = payload.get("previous_response_id")
        if isinstance(previous, str) and previous not in project.responses:
            return _json(answers.not_found("Previous response", previous, "previous_response_id",
                                           "previous_response_not_found"), 404)
        conversation = payload.get("conversation")
        conversation = conversation.get("id") if isinstance(conversation, dict) else conversation
        if isinstance(conversation, str) and conversation not in project.conversations:
            return _json(answers.not_found("Conversation", conversation, "conversation"), 404)
        prompt = max(1, len(call.body) // 4)
        if route == "responses_input_tokens":
            return _json({"object": "response.input_tokens", "input_tokens": prompt})
        tokens, _finish = self._tokens(payload, "max_output_tokens")
        usage = self._usage(prompt, len(tokens))
        made = answers.response(call.model, "".join(tokens).rstrip(), usage, previous=previous,
                                conversation=conversation if isinstance(conversation, str) else None)
        if payload.get("store") is not False:
            project.keep_response(made, answers.input_items(payload))
        if not call.stream:
            await asyncio.sleep(self.first_delay + len(tokens) / self.rate)
            return _json(made)
        return MockReply(None, self._response_events(made, tokens), stream=True)

    async def _response_events(self, made: dict[str, Any], tokens: list[str]) -> AsyncIterator[bytes]:
        sequence = iter(range(1_000_000))
        event = answers.typed_event
        begun = {**made, "status": "in_progress", "output": [], "usage": None}
        message = made["output"][0]
        await asyncio.sleep(self.first_delay)
        yield event("response.created", next(sequence), response=begun)
        yield event("response.in_progress", next(sequence), response=begun)
        yield event("response.output_item.added", next(sequence), output_index=0,
                    item={**message, "status": "in_progress", "content": []})
        yield event("response.content_part.added", next(sequence), item_id=message["id"], output_index=0,
                    content_index=0, part={"type": "output_text", "text": "", "annotations": []})
        for token in tokens:
            await asyncio.sleep(1.0 / self.rate)
            yield event("response.output_text.delta", next(sequence), item_id=message["id"], output_index=0,
                        content_index=0, delta=token, logprobs=[])
        text = message["content"][0]["text"]
        yield event("response.output_text.done", next(sequence), item_id=message["id"], output_index=0,
                    content_index=0, text=text, logprobs=[])
        yield event("response.content_part.done", next(sequence), item_id=message["id"], output_index=0,
                    content_index=0, part=message["content"][0])
        yield event("response.output_item.done", next(sequence), output_index=0, item=message)
        yield event("response.completed", next(sequence), response=made)

    def _conversations(self, call: Call, route: str) -> Reply:
        project = self.project
        found = call.endpoint.pattern.fullmatch(call.upstream_path.partition("?")[0])
        groups = found.groupdict() if found is not None else {}
        ident = groups.get("id", "")
        if route == "conversations":
            return _json(project.new_conversation(call.payload))
        if ident not in project.conversations:
            return _json(answers.not_found("Conversation", ident), 404)
        items = project.items.setdefault(ident, [])
        if route == "conversations_get":
            return _json(project.conversations[ident])
        if route == "conversations_update":
            project.conversations[ident]["metadata"] = call.payload.get("metadata") or {}
            return _json(project.conversations[ident])
        if route == "conversations_delete":
            project.conversations.pop(ident)
            return _json({"id": ident, "object": "conversation.deleted", "deleted": True})
        if route == "conversation_items":
            return _json({"object": "list", "data": items, "has_more": False})
        if route == "conversation_items_create":
            added = [answers.item_of(item) for item in call.payload.get("items") or []]
            items.extend(added)
            del items[:-answers.ITEMS]  # the newest are kept
            return _json({"object": "list", "data": added, "has_more": False})
        item = next((i for i in items if i["id"] == groups.get("item")), None)
        if item is None:
            return _json(answers.not_found("Item", groups.get("item", "")), 404)
        if route == "conversation_item_delete":
            items.remove(item)
            return _json(project.conversations[ident])
        return _json(item)

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
        return sorted(self.models) if self.models else list(MOCK_MODELS)
