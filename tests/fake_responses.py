"""The Responses API of the fake upstream: create (JSON, typed SSE, background), retrieve, delete, cancel,
input items, input token counts and compaction, all against this fake's own store.

The answer text is `cue.text`; a stream sends `cue.events` deltas `f"{cue.text}{i} "` and its final text is
their concatenation. A stream is stored as completed when it starts (a `cut` does not undo that).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any, Optional

import orjson

from .fake_store import StoredConversation, StoredResponse, item_tokens, normalize_items, page
from .fake_upstream import Cue
from .fake_wire import Body, Call, EventStream, FakeHandler, Frame, count_tokens, invalid, new_id


def conversation_id(value: Any) -> Optional[str]:
    """The id a `conversation` field names: a string or `{"id": ...}`."""
    if value is None:
        return None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    raise invalid("Invalid type for 'conversation': expected a string or an object with an 'id'.", "conversation",
                  "invalid_type")


def output_message(text: str, status: str = "completed") -> dict[str, Any]:
    """An assistant message of one `output_text` part."""
    return {"id": new_id("msg_"), "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """Responses usage with its details, as OpenAI reports it."""
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


def response_events(final: dict[str, Any], deltas: list[str], first_status: str = "in_progress") -> EventStream:
    """The typed SSE of a response with one text message, exactly in OpenAI's order, ending with `completed`."""
    message = final["output"][0]
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    opening = {**final, "status": first_status, "output": [], "usage": None, "completed_at": None}
    frames: list[Frame] = []

    def add(kind: str, **fields: Any) -> None:
        frames.append(Frame.of({"type": kind, **fields, "sequence_number": len(frames)}, kind))

    add("response.created", response=opening)
    add("response.in_progress", response={**opening, "status": "in_progress"})
    add("response.output_item.added", output_index=0, item={**message, "status": "in_progress", "content": []})
    add("response.content_part.added", **where,
        part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
    for delta in deltas:
        add("response.output_text.delta", **where, delta=delta, logprobs=[])
    add("response.output_text.done", **where, text="".join(deltas), logprobs=[])
    add("response.content_part.done", **where, part=message["content"][0])
    add("response.output_item.done", output_index=0, item=message)
    add("response.completed", response=final)
    return EventStream(frames[:-1], frames[-1:], typed=True, sequenced=True)


class Resolver(FakeHandler):
    """Shared by the endpoints that accept `previous_response_id` / `conversation`."""

    def context(self, payload: dict[str, Any]) -> tuple[list[dict[str, Any]], Optional[StoredConversation]]:
        """The items a follow-up builds on, and the conversation it names; OpenAI's 404 for foreign ids."""
        store = self.fake.store
        previous_id, conv_id = payload.get("previous_response_id"), conversation_id(payload.get("conversation"))
        if previous_id and conv_id:
            raise invalid("Mutually exclusive parameters: Ensure you are only providing one of: "
                          "'previous_response_id' or 'conversation'.", "conversation", "mutually_exclusive_parameters")
        if previous_id:
            if not isinstance(previous_id, str):
                raise invalid("Invalid type for 'previous_response_id': expected a string.", "previous_response_id",
                              "invalid_type")
            return store.chain(store.previous(previous_id)), None
        if conv_id:
            conversation = store.conversation(conv_id, "conversation")
            return list(conversation.items), conversation
        return [], None

    def input_items(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The request's `input` as stored items (none when absent)."""
        value = payload.get("input")
        return [] if value is None else normalize_items(value, "input")


class ResponsesHandler(Resolver):
    """POST /v1/responses."""

    async def on_post(self, call: Call, cue: Cue) -> Body | EventStream:
        payload, store = call.payload, self.fake.store
        model = call.require("model")
        keep = payload.get("store") is not False
        background, stream = call.flag("background"), call.flag("stream")
        if background and not keep:
            raise invalid("Background mode requires 'store' to be true.", "background", "invalid_value")
        context, conversation = self.context(payload)
        items = self.input_items(payload)
        instructions = payload.get("instructions")
        instructions = instructions if isinstance(instructions, str) else ""
        deltas = [f"{cue.text}{index} " for index in range(cue.events)] if stream else [cue.text]
        text = "".join(deltas)
        message = output_message(text)
        now = int(time.time())
        final = {
            "id": new_id("resp_"), "object": "response", "created_at": now, "status": "completed",
            "background": background, "completed_at": now, "error": None, "incomplete_details": None,
            "instructions": payload.get("instructions"), "max_output_tokens": payload.get("max_output_tokens"),
            "max_tool_calls": payload.get("max_tool_calls"), "model": model, "output": [message],
            "parallel_tool_calls": payload.get("parallel_tool_calls", True),
            "previous_response_id": payload.get("previous_response_id"),
            "conversation": {"id": conversation.body["id"]} if conversation else None,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": keep,
            "temperature": payload.get("temperature", 1.0), "text": payload.get("text") or {"format": {"type": "text"}},
            "tool_choice": payload.get("tool_choice", "auto"), "tools": payload.get("tools") or [],
            "top_p": payload.get("top_p", 1.0), "truncation": payload.get("truncation", "disabled"),
            "usage": usage(item_tokens(context + items) + count_tokens(instructions), count_tokens(text)),
            "user": payload.get("user"), "metadata": payload.get("metadata") or {},
        }
        if background and not stream:
            queued = {**final, "status": "queued", "output": [], "usage": None, "completed_at": None}
            self._complete_later(store.add_response(queued, items, done=False), final, conversation, items)
            return Body.json(queued)
        if keep:
            store.add_response(final, items, done=True)
        if conversation is not None:
            conversation.items += [*items, message]
        if stream:
            return response_events(final, deltas, "queued" if background else "in_progress")
        return Body.json(final)

    def _complete_later(self, stored: StoredResponse, final: dict[str, Any],
                        conversation: Optional[StoredConversation], items: list[dict[str, Any]]) -> None:
        delay = self.fake.store.background_seconds

        def start() -> None:
            if stored.body["status"] == "queued":
                stored.body["status"] = "in_progress"

        def finish() -> None:
            if stored.body["status"] in ("queued", "in_progress"):
                stored.body = {**final, "completed_at": int(time.time())}
                if conversation is not None:
                    conversation.items += [*items, *final["output"]]
            stored.done.set()

        loop = asyncio.get_running_loop()
        loop.call_later(delay / 2, start)
        loop.call_later(delay, finish)


class ResponseHandler(FakeHandler):
    """GET /v1/responses/{id} (`?stream=true&starting_after=N` replays its events) and DELETE."""

    async def on_get(self, call: Call, cue: Cue) -> Body | EventStream:
        stored = self.fake.store.response(call.path_args[0])
        if call.query.get("stream") != "true":
            return Body.json(stored.body)
        await stored.done.wait()
        body = stored.body
        if body["status"] != "completed":
            raise invalid(f"Response with id '{body['id']}' has status '{body['status']}' and cannot be streamed.",
                          "stream")
        text = body["output"][0]["content"][0]["text"] if body["output"] else ""
        events = response_events(body, re.findall(r"\S+\s*", text) or [text])
        try:
            after = int(call.query.get("starting_after", "-1"))
        except ValueError:
            raise invalid("Invalid 'starting_after': expected an integer.", "starting_after", "invalid_type") from None
        events.frames = [frame for frame in events.frames if orjson.loads(frame.data)["sequence_number"] > after]
        return events

    async def on_delete(self, call: Call, cue: Cue) -> Body:
        response_id = self.fake.store.response(call.path_args[0]).body["id"]
        del self.fake.store.responses[response_id]
        return Body.json({"id": response_id, "object": "response.deleted", "deleted": True})


class CancelHandler(FakeHandler):
    """POST /v1/responses/{id}/cancel: background responses only; a finished one comes back unchanged."""

    async def on_post(self, call: Call, cue: Cue) -> Body:
        stored = self.fake.store.response(call.path_args[0])
        if not stored.body.get("background"):
            raise invalid("Only responses created with background=true can be cancelled.", None)
        if stored.body["status"] in ("queued", "in_progress"):
            stored.body = {**stored.body, "status": "cancelled"}
            stored.done.set()
        return Body.json(stored.body)


class InputItemsHandler(FakeHandler):
    """GET /v1/responses/{id}/input_items with `limit`, `order` (default desc) and `after`."""

    async def on_get(self, call: Call, cue: Cue) -> Body:
        return Body.json(page(self.fake.store.response(call.path_args[0]).input_items, call.query))


class InputTokensHandler(Resolver):
    """POST /v1/responses/input_tokens: the input's token count, its context included."""

    async def on_post(self, call: Call, cue: Cue) -> Body:
        context, _conversation = self.context(call.payload)
        instructions = call.payload.get("instructions")
        tokens = item_tokens(context + self.input_items(call.payload))
        tokens += count_tokens(instructions) if isinstance(instructions, str) else 0
        return Body.json({"object": "response.input_tokens", "input_tokens": tokens})


class CompactHandler(Resolver):
    """POST /v1/responses/compact: the user messages kept, the rest replaced by one compaction item."""

    async def on_post(self, call: Call, cue: Cue) -> Body:
        call.require("model")
        context, _conversation = self.context(call.payload)
        items = context + self.input_items(call.payload)
        if not items:
            raise invalid("Nothing to compact: provide 'input' or 'previous_response_id'.", "input")
        kept = [item for item in items if item.get("type") == "message" and item.get("role") == "user"]
        digest = base64.b64encode(orjson.dumps([item["id"] for item in items])).decode()
        compaction = {"id": new_id("cmp_"), "type": "compaction", "encrypted_content": digest}
        output = [*kept, compaction]
        return Body.json({"id": new_id("resp_"), "object": "response.compaction", "created_at": int(time.time()),
                          "output": output, "usage": usage(item_tokens(items), item_tokens([compaction]))})


def response_routes() -> list[tuple[str, type[FakeHandler]]]:
    """The Responses API's routes, specific paths before `{id}`."""
    return [
        (r"/v1/responses", ResponsesHandler),
        (r"/v1/responses/input_tokens", InputTokensHandler),
        (r"/v1/responses/compact", CompactHandler),
        (r"/v1/responses/([^/]+)/cancel", CancelHandler),
        (r"/v1/responses/([^/]+)/input_items", InputItemsHandler),
        (r"/v1/responses/([^/]+)", ResponseHandler),
    ]
