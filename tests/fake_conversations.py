"""The Conversations API of the fake upstream: conversations and their items, stored per fake."""

from __future__ import annotations

from typing import Any

from .fake_store import StoredConversation, normalize_items, page
from .fake_upstream import Cue
from .fake_wire import Body, Call, FakeHandler, invalid

MAX_ITEMS_PER_CALL = 20


def metadata(payload: dict[str, Any], required: bool = False) -> dict[str, str]:
    """The `metadata` field: up to 16 string pairs."""
    value = payload.get("metadata")
    if value is None and not required:
        return {}
    if not isinstance(value, dict) or len(value) > 16 or not all(isinstance(v, str) for v in value.values()):
        raise invalid("Invalid 'metadata': expected an object of up to 16 string values.", "metadata", "invalid_type")
    return value


def new_items(payload: dict[str, Any], required: bool) -> list[dict[str, Any]]:
    """The `items` field, at most 20 per call."""
    value = payload.get("items")
    if value is None:
        if required:
            raise invalid("Missing required parameter: 'items'.", "items", "missing_required_parameter")
        return []
    if isinstance(value, list) and len(value) > MAX_ITEMS_PER_CALL:
        raise invalid(f"Invalid 'items': array too long. Expected an array with maximum length "
                      f"{MAX_ITEMS_PER_CALL}, but got an array with length {len(value)} instead.", "items",
                      "array_above_max_length")
    return normalize_items(value, "items")


class ConversationsHandler(FakeHandler):
    """POST /v1/conversations."""

    async def on_post(self, call: Call, cue: Cue) -> Body:
        conversation = self.fake.store.add_conversation(metadata(call.payload), new_items(call.payload, False))
        return Body.json(conversation.body)


class OneConversation(FakeHandler):
    """Base of the handlers under /v1/conversations/{id}."""

    def stored(self, call: Call) -> StoredConversation:
        """The conversation the path names, or OpenAI's 404."""
        return self.fake.store.conversation(call.path_args[0])


class ConversationHandler(OneConversation):
    """GET, POST (update metadata) and DELETE /v1/conversations/{id}."""

    async def on_get(self, call: Call, cue: Cue) -> Body:
        return Body.json(self.stored(call).body)

    async def on_post(self, call: Call, cue: Cue) -> Body:
        conversation = self.stored(call)
        conversation.body = {**conversation.body, "metadata": metadata(call.payload, required=True)}
        return Body.json(conversation.body)

    async def on_delete(self, call: Call, cue: Cue) -> Body:
        conversation_id = self.stored(call).body["id"]
        del self.fake.store.conversations[conversation_id]
        return Body.json({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


class ItemsHandler(OneConversation):
    """GET (`limit`, `order` default desc, `after`) and POST /v1/conversations/{id}/items."""

    async def on_get(self, call: Call, cue: Cue) -> Body:
        return Body.json(page(self.stored(call).items, call.query))

    async def on_post(self, call: Call, cue: Cue) -> Body:
        conversation = self.stored(call)
        items = new_items(call.payload, True)
        conversation.items += items
        return Body.json({"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
                          "last_id": items[-1]["id"] if items else None, "has_more": False})


class ItemHandler(OneConversation):
    """GET and DELETE /v1/conversations/{id}/items/{item_id}; DELETE answers the conversation."""

    async def on_get(self, call: Call, cue: Cue) -> Body:
        return Body.json(self.stored(call).item(call.path_args[1]))

    async def on_delete(self, call: Call, cue: Cue) -> Body:
        conversation = self.stored(call)
        conversation.items.remove(conversation.item(call.path_args[1]))
        return Body.json(conversation.body)


def conversation_routes() -> list[tuple[str, type[FakeHandler]]]:
    """The Conversations API's routes."""
    return [
        (r"/v1/conversations", ConversationsHandler),
        (r"/v1/conversations/([^/]+)/items/([^/]+)", ItemHandler),
        (r"/v1/conversations/([^/]+)/items", ItemsHandler),
        (r"/v1/conversations/([^/]+)", ConversationHandler),
    ]
