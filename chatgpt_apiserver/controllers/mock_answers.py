"""What the mock controller answers on endpoints other than chat: embeddings, completions, moderations,
responses and conversations, in OpenAI's shapes, with generated text. Each mock controller is one
"project": the responses and conversations it made are stored (a bounded few) and only it knows them."""

from __future__ import annotations

import base64
import hashlib
import math
import os
import struct
import time
from collections import OrderedDict
from typing import Any, Optional

import orjson

from ..endpoints.catalog import first_count

STORED = 1000  # responses and conversations a mock remembers
ITEMS = 1000  # items a mock keeps per conversation, and per stored response's input


def _id(prefix: str) -> str:
    return f"{prefix}_mock{os.urandom(12).hex()}"


def not_found(what: str, ident: str, param: Optional[str] = None, code: Optional[str] = None) -> dict[str, Any]:
    """OpenAI's 404 for an id this project does not hold."""
    return {"error": {"message": f"{what} with id '{ident}' not found.", "type": "invalid_request_error",
                      "param": param, "code": code}}


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text`."""
    seed = hashlib.sha256(text.encode()).digest()
    values: list[float] = []
    block = seed
    while len(values) < dimensions:
        block = hashlib.sha256(block).digest()
        values.extend(((b / 255.0) * 2 - 1) for b in struct.unpack("32B", block))
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _base64(vector: list[float]) -> str:
    """A vector as OpenAI sends it for `encoding_format: base64`: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings(payload: dict[str, Any]) -> dict[str, Any]:
    """An embeddings list: one vector per input (strings, or token arrays)."""
    raw = payload.get("input")
    inputs: list[Any] = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    asked = first_count(payload, "dimensions")
    dimensions = asked if asked is not None and asked <= 8192 else 1536
    vectors = [embedding(str(item), dimensions) for item in inputs]
    data = [{"object": "embedding", "index": i,
             "embedding": _base64(vector) if payload.get("encoding_format") == "base64" else vector}
            for i, vector in enumerate(vectors)]
    tokens = sum(max(1, len(str(item)) // 4) if not isinstance(item, list) else len(item) for item in inputs)
    return {"object": "list", "data": data, "model": payload.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def moderation(payload: dict[str, Any]) -> dict[str, Any]:
    """Nothing flagged."""
    raw = payload.get("input")
    count = len(raw) if isinstance(raw, list) else 1
    categories = ("harassment", "hate", "self-harm", "sexual", "violence")
    result = {"flagged": False, "categories": dict.fromkeys(categories, False),
              "category_scores": dict.fromkeys(categories, 0.0001)}
    return {"id": _id("modr"), "model": payload.get("model") or "omni-moderation-latest",
            "results": [result] * count}


def completion(model: str, text: str, n: int, usage: dict[str, int], finish: str = "stop") -> dict[str, Any]:
    """A legacy text completion."""
    return {"id": _id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": finish} for i in range(n)],
            "usage": usage}


def completion_chunk(ident: str, model: str, text: str, n: int, finish: Optional[str] = None) -> bytes:
    """One event of a streamed legacy completion."""
    choices = [{"text": text, "index": i, "logprobs": None, "finish_reason": finish} for i in range(n)]
    return b"data: " + orjson.dumps({"id": ident, "object": "text_completion", "created": int(time.time()),
                                     "model": model, "choices": choices}) + b"\n\n"


def typed_event(kind: str, sequence: int, **fields: Any) -> bytes:
    """One event of a typed stream (responses): its type on the `event:` line and in the data."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(
        {"type": kind, "sequence_number": sequence, **fields}) + b"\n\n"


class Project:
    """The responses and conversations one mock controller made (the newest STORED of each)."""

    def __init__(self) -> None:
        self.responses: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.inputs: dict[str, list[dict[str, Any]]] = {}
        self.conversations: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.items: dict[str, list[dict[str, Any]]] = {}

    def keep_response(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Store a response (and its input) for follow-ups."""
        self.responses[response["id"]] = response
        self.inputs[response["id"]] = input_items[-ITEMS:]
        while len(self.responses) > STORED:
            old, _ = self.responses.popitem(last=False)
            self.inputs.pop(old, None)

    def new_conversation(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Create a conversation."""
        ident = _id("conv")
        conversation = {"id": ident, "object": "conversation", "created_at": int(time.time()),
                        "metadata": payload.get("metadata") or {}}
        self.conversations[ident] = conversation
        items = payload.get("items")
        self.items[ident] = [item_of(i) for i in items] if isinstance(items, list) else []
        while len(self.conversations) > STORED:
            old, _ = self.conversations.popitem(last=False)
            self.items.pop(old, None)
        return conversation


def item_of(raw: Any) -> dict[str, Any]:
    """A conversation item from what a request gave."""
    item = dict(raw) if isinstance(raw, dict) else {"type": "message", "role": "user", "content": str(raw)}
    item.setdefault("id", _id("msg"))
    item.setdefault("type", "message")
    return item


def input_items(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """A responses request's `input` as items."""
    raw = payload.get("input")
    if isinstance(raw, list):
        return [item_of(item) for item in raw]
    return [item_of({"type": "message", "role": "user", "content": [{"type": "input_text", "text": str(raw or "")}]})]


def response(model: str, text: str, usage: dict[str, int], status: str = "completed",
             previous: Optional[str] = None, conversation: Optional[str] = None) -> dict[str, Any]:
    """A response object with one message of text."""
    message = {"type": "message", "id": _id("msg"), "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    return {"id": _id("resp"), "object": "response", "created_at": int(time.time()), "status": status,
            "model": model, "output": [message] if status == "completed" else [], "error": None,
            "incomplete_details": None, "instructions": None, "metadata": {}, "parallel_tool_calls": True,
            "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
            "previous_response_id": previous, "conversation": {"id": conversation} if conversation else None,
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                      "total_tokens": usage["total_tokens"], "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}} if status == "completed" else None}
