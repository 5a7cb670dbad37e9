"""Request validation for OpenAI's endpoints, compiled from OpenAI's published schemas, never stricter.

`validator(key)` checks a JSON body and `form_validator(key)` a multipart form, for each key of the
schema file's "requests" map, such as "POST /v1/embeddings (application/json)". A mistake raises a 400
`ApiError` naming the field: message "Invalid 'input[2]': must be a string." and param "input[2]".

What keeps the gateway from refusing a request OpenAI would take:

- null for an optional property is accepted at every depth: clients send it for "not set", and the
  upstream judges it;
- unknown properties pass through and `additionalProperties: false` is never enforced: the gateway
  relays fields it does not know, so new OpenAI fields and vLLM or Ollama extensions keep working;
- a required property that may be null may also be left out, as null means "not set";
- `oneOf` is read as `anyOf`;
- `RELAXED` lists the few requirements of the schema that OpenAI does not enforce on requests;
- a keyword the compiler does not know accepts the value (`compiler.HANDLED` lists what it enforces,
  `compiler.IGNORED` what it skips on purpose).

Each endpoint compiles once, on first use, into voluptuous validators (callables that raise
`vol.Invalid`) under one `vol.Schema`. Objects are checked by a compiled loop rather than a voluptuous
dict schema each: that measured 0.5 us against 3.4 us for a two-key object, and it runs for every item
of a long input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

import orjson
import voluptuous as vol

from ..errors import ApiError, invalid_request
from .compiler import Compiler
from .forms import FormCheck
from .nodes import Node

SCHEMA_FILE = "openai-endpoint-schemas.json"
JSON_BODY = "(application/json)"
FORM_BODY = "(multipart/form-data)"
_KEY_LIMIT = 64  # longest key of a client's map shown in `param`
# Requirements of the published schema that OpenAI does not enforce on requests (the schema reuses
# response shapes there), each with its evidence and a test.
RELAXED = {
    # OpenAI's image-input example: {"type": "input_image", "image_url": "https://..."}
    "InputImageContent": frozenset({"detail"}),
    # An output message sent back as input: the openai SDK's ResponseOutputTextParam has no required logprobs.
    "OutputTextContent": frozenset({"logprobs"}),
}


@functools.cache
def _document() -> tuple[Compiler, dict[str, str]]:
    document = orjson.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_bytes())
    return Compiler(document["$defs"], RELAXED), document["requests"]


def request_keys() -> tuple[str, ...]:
    """Every request the schema file describes: "POST /v1/embeddings (application/json)", ..."""
    return tuple(_document()[1])


def _root(key: str, body: str) -> Node:
    compiler, requests = _document()
    if key not in requests or not key.endswith(body):
        raise KeyError(f"the schema file has no {body} request {key!r}")
    return compiler.define(requests[key])


@functools.cache
def validator(key: str) -> Callable[[dict[str, Any]], None]:
    """The check of a decoded JSON body for `key`; it raises a 400 `ApiError` naming the field."""
    schema = vol.Schema(_root(key, JSON_BODY).built())

    def validate(payload: dict[str, Any]) -> None:
        try:
            schema(payload)
        except vol.Invalid as error:
            raise api_error(error) from None
        except RecursionError:
            raise invalid_request("The request body is nested too deeply to check.") from None
    return validate


@functools.cache
def form_validator(key: str) -> Callable[[Mapping[str, list[str]], set[str]], None]:
    """The check of a multipart form for `key`: its text fields, and the names of its file parts."""
    check = FormCheck(_root(key, FORM_BODY))

    def validate(fields: Mapping[str, list[str]], files: set[str]) -> None:
        try:
            check(fields, files)
        except vol.Invalid as error:
            raise api_error(error) from None
        except RecursionError:
            raise invalid_request("The form is nested too deeply to check.") from None
    return validate


def field_param(path: Iterable[Any]) -> str:
    """The field a path names, as OpenAI writes it: "input[2].content"; long keys are cut short."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
            continue
        name = str(part)
        name = name if len(name) <= _KEY_LIMIT else name[:_KEY_LIMIT - 3] + "..."
        out += f".{name}" if out else name
    return out


def api_error(error: vol.Invalid) -> ApiError:
    """The 400 for a voluptuous error: "Invalid 'input[2]': must be a string." with param "input[2]"."""
    while isinstance(error, vol.MultipleInvalid):
        error = error.errors[0]
    message = error.error_message
    if message == "required key not provided":
        message = "is required"
    elif message.startswith("expected str"):
        message = "must be a string"
    param = field_param(error.path)
    if not param:
        return invalid_request(f"Invalid request body: {message}.")
    return invalid_request(f"Invalid '{param}': {message}.", param=param)
