"""What the endpoint validation tests share: the endpoints, a minimal request for each, and JSON strategies."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
import pytest
from hypothesis import strategies as st

from chatgpt_apiserver.endpoints import validation
from chatgpt_apiserver.endpoints.validation import validator
from chatgpt_apiserver.errors import ApiError

SPEECH = "POST /v1/audio/speech (application/json)"
TRANSCRIPTIONS = "POST /v1/audio/transcriptions (multipart/form-data)"
TRANSLATIONS = "POST /v1/audio/translations (multipart/form-data)"
COMPLETIONS = "POST /v1/completions (application/json)"
EMBEDDINGS = "POST /v1/embeddings (application/json)"
IMAGE_EDITS_FORM = "POST /v1/images/edits (multipart/form-data)"
IMAGE_EDITS = "POST /v1/images/edits (application/json)"
IMAGES = "POST /v1/images/generations (application/json)"
MODERATIONS = "POST /v1/moderations (application/json)"
RESPONSES = "POST /v1/responses (application/json)"
CONVERSATIONS = "POST /v1/conversations (application/json)"
CONVERSATION = "POST /v1/conversations/{conversation_id} (application/json)"
INPUT_TOKENS = "POST /v1/responses/input_tokens (application/json)"
COMPACT = "POST /v1/responses/compact (application/json)"

# The smallest request each endpoint takes; a new endpoint in the schema file must be added here.
MINIMAL: dict[str, Any] = {
    SPEECH: {"model": "tts-1", "input": "hi", "voice": "alloy"},
    TRANSCRIPTIONS: ({"model": ["whisper-1"]}, {"file"}),
    TRANSLATIONS: ({"model": ["whisper-1"]}, {"file"}),
    COMPLETIONS: {"model": "m", "prompt": "hi"},
    EMBEDDINGS: {"model": "m", "input": "hi"},
    IMAGE_EDITS_FORM: ({"prompt": ["a hat"]}, {"image"}),
    IMAGE_EDITS: {"images": [{"file_id": "file-1"}], "prompt": "a hat"},
    IMAGES: {"prompt": "an otter"},
    MODERATIONS: {"input": "hi"},
    RESPONSES: {"model": "m", "input": "hi"},
    CONVERSATIONS: {},
    CONVERSATION: {"metadata": {"topic": "x"}},
    INPUT_TOKENS: {},
    COMPACT: {"model": "m"},
}
JSON_KEYS = [key for key in MINIMAL if key.endswith("(application/json)")]
FORM_KEYS = [key for key in MINIMAL if key.endswith("(multipart/form-data)")]


def document() -> dict[str, Any]:
    raw = resources.files(validation.__package__).joinpath(validation.SCHEMA_FILE).read_bytes()
    result: dict[str, Any] = orjson.loads(raw)
    return result


def error_of(key: str, body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        validator(key)(body)
    return caught.value


def root_fields(key: str) -> tuple[dict[str, Any], frozenset[str]]:
    compiler, requests = validation._document()
    root = compiler.define(requests[key])
    return root.fields(), root.requires()


def all_property_names() -> list[str]:
    names: set[str] = set()

    def walk(schema: Any) -> None:
        if isinstance(schema, dict):
            names.update(schema.get("properties", {}) if isinstance(schema.get("properties"), dict) else ())
            for value in schema.values():
                walk(value)
        elif isinstance(schema, list):
            for value in schema:
                walk(value)
    walk(document()["$defs"])
    return sorted(names)


PROPERTY_NAMES = all_property_names()
TAGS = ["message", "function_call", "function_call_output", "reasoning", "file_search_call", "web_search_call",
        "computer_call", "item_reference", "input_text", "input_image", "input_file", "output_text", "function",
        "file_search", "mcp", "web_search_preview", "and", "eq", "json_schema", "text", "image_url", "server_vad",
        "summary_text", "auto", "user", "assistant", "x"]
leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
          | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12) | st.sampled_from(TAGS))
json_values = st.recursive(
    leaves,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.sampled_from(PROPERTY_NAMES) | st.text(max_size=6), children, max_size=4)
                      | st.builds(lambda tag, rest: {**rest, "type": tag}, st.sampled_from(TAGS),
                                  st.dictionaries(st.sampled_from(PROPERTY_NAMES), children, max_size=4))),
    max_leaves=24,
)


def accepted_or_a_400(run: Any) -> None:
    try:
        run()
    except ApiError as error:
        assert (error.status, error.type, error.code) == (400, "invalid_request_error", "invalid_value")
        assert error.message.startswith("Invalid ") and error.message.endswith("."), error.message
        assert error.param is None or f"'{error.param}'" in error.message
        assert len(error.message) < 2000
