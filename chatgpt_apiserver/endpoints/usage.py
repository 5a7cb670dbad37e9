"""Reading an answer's token usage, whatever endpoint it came from, without parsing a large body whole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import orjson

WHOLE_PARSE_BELOW = 64 * 1024  # smaller answers are parsed whole (cheaper than searching them)
TAIL = 16 * 1024  # the end of a large answer searched for its usage
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = ord("{"), ord("}"), ord('"'), ord("\\")


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens an answer used: chat and embeddings say prompt/completion, responses say input/output."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0  # prompt tokens served from the cache (never more than `prompt`: see usage_from)
    total: Optional[int] = None

    @property
    def tokens(self) -> int:
        """Every token counted."""
        return self.total if self.total is not None else self.prompt + self.completion


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from(usage: Any) -> Optional[Usage]:
    """A `usage` object in any of OpenAI's shapes, or None if it is not one."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = min(_int(details.get("cached_tokens")), prompt) if isinstance(details, dict) else 0
    total = usage.get("total_tokens")
    if not prompt and not completion and not isinstance(total, int):
        return None
    return Usage(prompt, completion, cached, total if isinstance(total, int) and not isinstance(total, bool) else None)


def usage_of(document: Any) -> Optional[Usage]:
    """The usage of a parsed answer or stream event (a response's is under `response`)."""
    if not isinstance(document, dict):
        return None
    found = usage_from(document.get("usage"))
    if found is None and isinstance(document.get("response"), dict):
        found = usage_from(document["response"].get("usage"))
    return found


def find_usage(body: bytes | bytearray) -> Optional[Usage]:
    """The usage of a JSON answer. In a large answer (2 MB of embeddings) the top-level `usage` object is
    found from the end and parsed alone; if it is not where OpenAI puts it, the body is parsed whole."""
    if len(body) >= WHOLE_PARSE_BELOW:
        found = _usage_at_end(body)
        if found is not None:
            return found
    try:
        return usage_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def find_usage_in(pieces: list[bytes | bytearray]) -> Optional[Usage]:
    """`find_usage` of a body held as the pieces it came in: a large one is searched in its last pieces only."""
    size = sum(len(piece) for piece in pieces)
    if size >= WHOLE_PARSE_BELOW:
        index = len(pieces) - 1
        tail = pieces[index] if pieces else b""
        while len(tail) < TAIL and index > 0:
            index -= 1
            tail = pieces[index] + tail
        found = _usage_at_end(tail)
        if found is not None:
            return found
    return find_usage(pieces[0] if len(pieces) == 1 else b"".join(pieces))


def _usage_at_end(body: bytes | bytearray) -> Optional[Usage]:
    key = body.rfind(b'"usage"')
    if key < 0:
        return None
    start = body.find(b"{", key + 7, key + 64)
    if start < 0 or body[key + 7:start].strip() != b":":
        return None
    end = _object_end(body, start)
    if end < 0 or body[end:].strip() != b"}":  # the last key of the top-level object, or not ours
        return None
    try:
        return usage_from(orjson.loads(body[start:end]))
    except orjson.JSONDecodeError:
        return None


def _object_end(data: bytes | bytearray, start: int, limit: int = 4096) -> int:
    """The index just after the JSON object that opens at `start` (-1 if it does not close soon)."""
    depth = 0
    in_string = False
    index = start
    stop = min(len(data), start + limit)
    while index < stop:
        byte = data[index]
        if in_string:
            if byte == _BACKSLASH:
                index += 1
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte == _OPEN:
            depth += 1
        elif byte == _CLOSE:
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return -1
