"""Embeddings, legacy completions and moderations of the fake upstream."""

from __future__ import annotations

import base64
import functools
import math
import time
import zlib
from array import array
from typing import Any

from .fake_upstream import Cue
from .fake_wire import DONE, Body, Call, EventStream, FakeHandler, Frame, count_tokens, invalid, new_id

BASIS_SPAN = 1021  # distinct vectors per dimension count: a prime, so offsets spread well


@functools.cache
def basis(dimensions: int) -> tuple[list[float], bytes]:
    """Deterministic floats to slice embeddings from, as Python floats and as float32 bytes."""
    values = [round(math.sin(index * 12.9898 + 78.233) * 0.08, 10) for index in range(dimensions + BASIS_SPAN)]
    return values, array("f", values).tobytes()


def embedding(seed: bytes, dimensions: int, encoding: str) -> list[float] | str:
    """The embedding of one input: the same input always gives the same vector."""
    offset = zlib.crc32(seed) % BASIS_SPAN
    values, packed = basis(dimensions)
    if encoding == "base64":
        return base64.b64encode(packed[offset * 4:(offset + dimensions) * 4]).decode()
    return values[offset:offset + dimensions]


def is_tokens(value: Any) -> bool:
    """Whether `value` is a non-empty array of token ids."""
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in value)


def text_inputs(value: Any, param: str) -> list[tuple[bytes, int]]:
    """Each input of a string / strings / token array / token arrays field: (its bytes, its token count)."""
    if isinstance(value, str) and value:
        return [(value.encode(), count_tokens(value))]
    if is_tokens(value):
        return [(repr(value).encode(), len(value))]
    if isinstance(value, list) and value and len(value) <= 2048:
        if all(isinstance(v, str) and v for v in value):
            return [(v.encode(), count_tokens(v)) for v in value]
        if all(is_tokens(v) for v in value):
            return [(repr(v).encode(), len(v)) for v in value]
    raise invalid(f"Invalid '{param}': expected a non-empty string, an array of non-empty strings, an array of "
                  "tokens or an array of token arrays (at most 2048 items).", param, "invalid_value")


class EmbeddingsHandler(FakeHandler):
    """POST /v1/embeddings: one deterministic vector per input, floats or base64 float32."""

    async def on_post(self, call: Call, cue: Cue) -> Body:
        model = call.require("model")
        inputs = text_inputs(call.require("input"), "input")
        dimensions = call.integer("dimensions", 1536, 1, 3072)
        encoding = call.choice("encoding_format", "float", ("float", "base64"))
        tokens = sum(count for _seed, count in inputs)
        return Body.json({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": index, "embedding": embedding(seed, dimensions, encoding)}
                     for index, (seed, _count) in enumerate(inputs)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })


class CompletionsHandler(FakeHandler):
    """POST /v1/completions: `n` choices per prompt; streams `text_completion` chunks then `data: [DONE]`."""

    async def on_post(self, call: Call, cue: Cue) -> Body | EventStream:
        model = call.require("model")
        prompts = text_inputs(call.require("prompt"), "prompt")
        n = call.integer("n", 1, 1, 128)
        count = len(prompts) * n
        base = {"id": new_id("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": model}
        if not call.flag("stream"):
            text = cue.text
            echo = call.flag("echo")
            choices = [{"text": (prompts[index // n][0].decode() if echo else "") + text, "index": index,
                        "logprobs": None, "finish_reason": "stop"} for index in range(count)]
            prompt_tokens = sum(tokens for _seed, tokens in prompts)
            completion_tokens = count * count_tokens(text)
            return Body.json({**base, "choices": choices, "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}})
        include_usage = bool((call.payload.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include_usage else {}

        def chunk(index: int, text: str, finish: str | None) -> Frame:
            return Frame.of({**base, "choices": [{"text": text, "index": index, "logprobs": None,
                                                  "finish_reason": finish}], **extra})

        frames = [chunk(index, f"{cue.text}{event} ", None) for event in range(cue.events) for index in range(count)]
        frames += [chunk(index, "", "stop") for index in range(count)]
        if include_usage:
            prompt_tokens = sum(tokens for _seed, tokens in prompts)
            frames.append(Frame.of({**base, "choices": [], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": count * cue.events,
                "total_tokens": prompt_tokens + count * cue.events}}))
        return EventStream(frames, [DONE])


CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
              "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
              "violence/graphic")
IMAGE_CATEGORIES = ("self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence",
                    "violence/graphic")


def moderation(text: str, has_image: bool) -> dict[str, Any]:
    """One result: a category is flagged when the text contains its name (e.g. "violence")."""
    lowered = text.lower()
    flagged = {category: category in lowered for category in CATEGORIES}
    return {
        "flagged": any(flagged.values()),
        "categories": flagged,
        "category_scores": {category: 0.97 if hit else 0.00012 for category, hit in flagged.items()},
        "category_applied_input_types": {
            category: ["text", "image"] if has_image and category in IMAGE_CATEGORIES else ["text"]
            for category in CATEGORIES},
    }


class ModerationsHandler(FakeHandler):
    """POST /v1/moderations: one result per string input, one for a list of text / image parts."""

    async def on_post(self, call: Call, cue: Cue) -> Body:
        value = call.require("input")
        if isinstance(value, str):
            results = [moderation(value, False)]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            results = [moderation(v, False) for v in value]
        elif isinstance(value, list) and value and all(isinstance(v, dict) and v.get("type") in ("text", "image_url")
                                                       for v in value):
            text = " ".join(str(part.get("text", "")) for part in value if part["type"] == "text")
            results = [moderation(text, any(part["type"] == "image_url" for part in value))]
        else:
            raise invalid("Invalid 'input': expected a string, an array of strings or an array of text and "
                          "image_url parts.", "input", "invalid_value")
        model = call.payload.get("model") or "omni-moderation-latest"
        return Body.json({"id": new_id("modr-"), "model": model, "results": results})


def text_routes() -> list[tuple[str, type[FakeHandler]]]:
    """Routes of the embeddings, completions and moderations endpoints."""
    return [
        (r"/v1/embeddings", EmbeddingsHandler),
        (r"/v1/completions", CompletionsHandler),
        (r"/v1/moderations", ModerationsHandler),
    ]
