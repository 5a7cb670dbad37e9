"""Validation of chat-completion requests: never stricter than OpenAI's schema, unknown fields pass through.

A hand-written check rather than the schema compiler of `endpoints`: chat is the most used endpoint,
and a loop over its messages costs a fraction of the generic one. Its rules are the same: null for an
optional field is "not set", and an integer may be written 2.0 (JSON Schema counts it as one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import voluptuous as vol

from ..endpoints.checks import shown, whole_number
from ..endpoints.validation import api_error
from ..errors import invalid_request

ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
# Roles whose messages must carry `content` (OpenAI's schema); assistant may omit it.
CONTENT_REQUIRED = frozenset(("system", "developer", "user", "tool", "function"))


def _number(low: float, high: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise vol.Invalid("must be a number")
        if not low <= value <= high:
            raise vol.Invalid(f"must be between {low:g} and {high:g}, got {value}")
        return value

    return check


def _integer(low: float = float("-inf"), high: float = float("inf")) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None:
            return value
        if whole_number(value) is None:
            raise vol.Invalid("must be an integer")
        if not low <= value <= high:
            raise vol.Invalid(f"must be between {low:g} and {high:g}, got {value}")
        return value

    return check


def _boolean(value: Any) -> Any:
    if value is not None and not isinstance(value, bool):
        raise vol.Invalid("must be a boolean (true or false)")
    return value


def _string(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise vol.Invalid("must be a string")
    return value


def _model(value: Any) -> str:
    # Any string, as OpenAI's schema says; which models exist is the upstream's to judge.
    if not isinstance(value, str):
        raise vol.Invalid("must be a string naming the model")
    return value


def _content(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            raise vol.Invalid("must not be an empty list")
        for index, part in enumerate(value):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise vol.Invalid("each content part must be an object with a string type", path=[index])
        return value
    raise vol.Invalid("must be a string, null or a list of content parts")


def _messages(value: Any) -> Any:
    """A non-empty list of messages with a known role; written as a loop, as it runs per message."""
    if not isinstance(value, list):
        raise vol.Invalid("must be a list of messages")
    if not value:
        raise vol.Invalid("must contain at least one message")
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise vol.Invalid("each message must be an object", path=[index])
        role = message.get("role")
        if role not in ROLES:
            if role is None:
                raise vol.Invalid("is required", path=[index, "role"])
            raise vol.Invalid(f"must be one of {', '.join(sorted(ROLES))}, got {shown(role)}", path=[index, "role"])
        if "content" in message:
            try:
                _content(message["content"])
            except vol.Invalid as exc:
                raise vol.Invalid(exc.error_message, path=[index, "content", *exc.path]) from None
        elif role in CONTENT_REQUIRED:
            raise vol.Invalid(f"is required for {role} messages", path=[index, "content"])
    return value


def _stop(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise vol.Invalid("must be a string, a list of strings or null")


def _stream_options(value: Any) -> Any:
    if value is None:
        return value
    if not isinstance(value, dict):
        raise vol.Invalid("must be an object or null")
    for key in ("include_usage", "include_obfuscation"):
        if value.get(key) is not None and not isinstance(value[key], bool):
            raise vol.Invalid("must be a boolean (true or false)", path=[key])
    return value


def _logit_bias(value: Any) -> Any:
    if value is None:
        return value
    if not isinstance(value, dict):
        raise vol.Invalid("must be an object mapping token ids to integers")
    for key, bias in value.items():
        if bias is not None and whole_number(bias) is None:
            raise vol.Invalid("must be an integer", path=[key])
    return value


def _list_of_objects(value: Any) -> Any:
    if value is not None and (not isinstance(value, list) or not all(isinstance(item, dict) for item in value)):
        raise vol.Invalid("must be a list of objects")
    return value


def _object(value: Any) -> Any:
    if value is not None and not isinstance(value, dict):
        raise vol.Invalid("must be an object")
    return value


# Ranges follow OpenAI's published schema; no stricter than it. Every optional field takes null. The optional
# fields are plain keys (optional by the Schema's default), not `vol.Optional`: voluptuous visits every
# marked key on every call to look for a default, which cost 2 µs of a chat request's 10 in validation.
CHAT_REQUEST = vol.Schema(
    {
        vol.Required("model"): _model,
        vol.Required("messages"): _messages,
        "stream": _boolean,
        "stream_options": _stream_options,
        "temperature": _number(0, 2),
        "top_p": _number(0, 1),
        "n": _integer(1, 128),
        "presence_penalty": _number(-2, 2),
        "frequency_penalty": _number(-2, 2),
        "max_tokens": _integer(),
        "max_completion_tokens": _integer(),
        "top_logprobs": _integer(0, 20),
        "seed": _integer(),
        "logprobs": _boolean,
        "store": _boolean,
        "parallel_tool_calls": _boolean,
        "stop": _stop,
        "logit_bias": _logit_bias,
        "tools": _list_of_objects,
        "functions": _list_of_objects,
        "response_format": _object,
        "user": _string,
    },
    extra=vol.ALLOW_EXTRA,
)


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """Decode and validate a chat-completions body; raise a 400 `ApiError` naming the field."""
    if not body:
        raise invalid_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    try:
        CHAT_REQUEST(payload)
    except vol.Invalid as error:
        raise api_error(error) from None
    return payload

