"""What one fake upstream keeps, as one OpenAI project does: stored responses and conversations.

Ids are OpenAI-style and random, so they are unique across fakes: a follow-up that reaches the wrong fake
gets OpenAI's 404, which is what the gateway's affinity tests need to see.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from .fake_wire import FakeApiError, count_tokens, invalid, new_id

ROLES = ("user", "assistant", "system", "developer")
ITEM_PREFIXES = {"function_call": "fc_", "function_call_output": "fco_", "reasoning": "rs_", "compaction": "cmp_"}


@dataclass
class StoredResponse:
    """A stored response: the object GET answers, its input items, and whether it has finished."""

    body: dict[str, Any]
    input_items: list[dict[str, Any]]
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class StoredConversation:
    """A conversation: the object GET answers and its items, oldest first."""

    body: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)

    def item(self, item_id: str) -> dict[str, Any]:
        """The item with `item_id`, or OpenAI's 404."""
        for item in self.items:
            if item["id"] == item_id:
                return item
        raise FakeApiError(404, f"Item with id '{item_id}' not found.")


class FakeStore:
    """One fake's responses and conversations, by id."""

    def __init__(self) -> None:
        self.responses: dict[str, StoredResponse] = {}
        self.conversations: dict[str, StoredConversation] = {}
        self.background_seconds = 0.2  # how long a background response stays queued / in progress

    def add_response(self, body: dict[str, Any], input_items: list[dict[str, Any]], done: bool) -> StoredResponse:
        """Store a response (`done` when it has finished, so a replay need not wait)."""
        stored = StoredResponse(body, input_items)
        if done:
            stored.done.set()
        self.responses[body["id"]] = stored
        return stored

    def response(self, response_id: str) -> StoredResponse:
        """The stored response, or OpenAI's 404."""
        if response_id not in self.responses:
            raise FakeApiError(404, f"Response with id '{response_id}' not found.")
        return self.responses[response_id]

    def previous(self, response_id: str) -> StoredResponse:
        """The response `previous_response_id` names, or OpenAI's 404 `previous_response_not_found`."""
        if response_id not in self.responses:
            raise FakeApiError(404, f"Previous response with id '{response_id}' not found.", "previous_response_id",
                               "previous_response_not_found")
        return self.responses[response_id]

    def add_conversation(self, metadata: dict[str, Any], items: list[dict[str, Any]]) -> StoredConversation:
        """Start a conversation with `items`."""
        body: dict[str, Any] = {"id": new_id("conv_"), "object": "conversation", "created_at": int(time.time()),
                "metadata": metadata}
        conversation = StoredConversation(body, items)
        self.conversations[body["id"]] = conversation
        return conversation

    def conversation(self, conversation_id: str, param: Optional[str] = None) -> StoredConversation:
        """The conversation, or OpenAI's 404 (naming `param` when a request field named it)."""
        if conversation_id not in self.conversations:
            raise FakeApiError(404, f"Conversation with id '{conversation_id}' not found.", param,
                               "conversation_not_found" if param else None)
        return self.conversations[conversation_id]

    def chain(self, previous: StoredResponse) -> list[dict[str, Any]]:
        """Every input and output item of `previous` and the responses before it, oldest first."""
        chain: list[StoredResponse] = []
        current: Optional[StoredResponse] = previous
        while current is not None and current not in chain:
            chain.append(current)
            earlier = current.body.get("previous_response_id")
            current = self.responses.get(earlier) if earlier else None
        items: list[dict[str, Any]] = []
        for stored in reversed(chain):
            items += stored.input_items + list(stored.body.get("output") or [])
        return items


def content_parts(content: Any, role: str, where: str) -> list[dict[str, Any]]:
    """A message's content as typed parts, the way OpenAI stores it."""
    if isinstance(content, str):
        if role == "assistant":
            return [{"type": "output_text", "text": content, "annotations": [], "logprobs": []}]
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"Invalid type for '{where}.content': expected a string or an array of content parts.",
                      f"{where}.content", "invalid_type")
    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(f"Invalid '{where}.content[{index}]': expected an object with a 'type'.",
                          f"{where}.content[{index}]", "invalid_type")
        parts.append({"annotations": [], **part} if part["type"] == "output_text" else dict(part))
    return parts


def normalize_items(value: Any, param: str) -> list[dict[str, Any]]:
    """Input items as OpenAI stores them: each with an id and a status, message content as typed parts."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid(f"Invalid type for '{param}': expected a string or an array of items.", param, "invalid_type")
    items = []
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        if not isinstance(item, dict):
            raise invalid(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise invalid(f"Invalid value: {role!r}. Supported values are: 'user', 'assistant', 'system', and "
                              "'developer'.", f"{where}.role", "invalid_value")
            items.append({"id": item.get("id") or new_id("msg_"), "type": "message", "status": "completed",
                          "role": role, "content": content_parts(item.get("content"), role, where)})
        elif isinstance(kind, str):
            items.append({"id": new_id(ITEM_PREFIXES.get(kind, "item_")), "status": "completed", **item})
        else:
            raise invalid(f"Invalid type for '{where}.type': expected a string.", f"{where}.type", "invalid_type")
    return items


def item_tokens(items: list[dict[str, Any]]) -> int:
    """The token estimate of items: their text parts, or the whole item when it has none."""
    total = 0
    for item in items:
        texts = [part.get("text") or "" for part in item.get("content") or [] if isinstance(part, dict)]
        total += count_tokens(" ".join(texts)) if texts else count_tokens(orjson.dumps(item).decode())
    return total


def page(items: list[dict[str, Any]], query: dict[str, str], default_order: str = "desc") -> dict[str, Any]:
    """A list answer honouring `limit` (1-100, default 20), `order` (asc | desc) and `after` (an item id)."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise invalid("Invalid 'limit': expected an integer.", "limit", "invalid_type") from None
    if not 1 <= limit <= 100:
        raise invalid("Invalid 'limit': expected a value between 1 and 100.", "limit", "integer_out_of_range")
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise invalid(f"Invalid value for 'order': {order!r}. Supported values are: 'asc' and 'desc'.", "order",
                      "invalid_value")
    ordered = items if order == "asc" else items[::-1]
    after = query.get("after")
    if after:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise invalid(f"Invalid 'after': no item with id '{after}'.", "after", "invalid_value")
        ordered = ordered[ids.index(after) + 1:]
    data = ordered[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(ordered) > limit}
