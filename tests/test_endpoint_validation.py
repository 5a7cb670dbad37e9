"""Request validation of every OpenAI endpoint: OpenAI's examples pass, each mistake is a 400 naming the
field, null and unknown fields pass, and no input raises anything but that 400."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import orjson
import pytest
import voluptuous as vol
from hypothesis import given, settings
from hypothesis import strategies as st

from chatgpt_apiserver.endpoints import validation
from chatgpt_apiserver.endpoints.compiler import HANDLED, IGNORED, Compiler
from chatgpt_apiserver.endpoints.validation import form_validator, request_keys, validator
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
# Every keyword the packaged schema file uses. A new one fails this list, so it is noticed and decided
# (enforce it in the compiler or list it as ignored) rather than silently passing or refusing.
KEYWORDS_IN_FILE = {
    "$recursiveAnchor", "$recursiveRef", "$ref", "additionalProperties", "allOf", "anyOf", "default",
    "discriminator", "enum", "format", "items", "maxItems", "maxLength", "maxProperties", "maximum",
    "minItems", "minLength", "minimum", "not", "nullable", "oneOf", "pattern", "properties", "propertyNames",
    "required", "type",
}


def document() -> dict[str, Any]:
    raw = resources.files(validation.__package__).joinpath(validation.SCHEMA_FILE).read_bytes()
    result: dict[str, Any] = orjson.loads(raw)
    return result


def error_of(key: str, body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        validator(key)(body)
    return caught.value


def keywords(schema: Any, found: set[str], refs: set[str]) -> None:
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        found.add(key)
        if key == "$ref":
            refs.add(value)
        elif key == "properties":
            for sub in value.values():
                keywords(sub, found, refs)
        elif key in ("items", "additionalProperties", "not", "propertyNames"):
            keywords(value, found, refs)
        elif key in ("anyOf", "oneOf", "allOf"):
            for sub in value:
                keywords(sub, found, refs)


def test_the_schema_file_uses_only_keywords_the_compiler_decided_on() -> None:
    found: set[str] = set()
    refs: set[str] = set()
    definitions = document()["$defs"]
    for schema in definitions.values():
        keywords(schema, found, refs)
    assert found == KEYWORDS_IN_FILE
    assert found <= HANDLED | IGNORED
    assert not HANDLED & IGNORED
    assert {ref.removeprefix("#/$defs/") for ref in refs} <= set(definitions)  # every $ref resolves


def test_every_definition_compiles_and_checks_without_crashing() -> None:
    definitions = document()["$defs"]
    compiler = Compiler(definitions)
    for name in definitions:
        node = compiler.define(name)
        for value in (None, {}, [], "x", 1, 1.5, True):
            try:
                node.check(value)
            except vol.Invalid as error:
                assert error.error_message, name
        assert node.what(), name


def test_every_request_of_the_file_compiles_and_takes_a_minimal_request() -> None:
    assert set(request_keys()) == set(MINIMAL)
    for key in JSON_KEYS:
        validator(key)(MINIMAL[key])
    for key in FORM_KEYS:
        form_validator(key)(*MINIMAL[key])


def test_a_validator_is_compiled_once_and_leaves_the_body_as_it_was() -> None:
    assert validator(RESPONSES) is validator(RESPONSES)
    body = {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}], "extra": [1, {}]}
    before = copy.deepcopy(body)
    assert validator(RESPONSES)(body) is None
    assert body == before


def test_a_form_key_has_no_json_validator_and_the_other_way_round() -> None:
    with pytest.raises(KeyError):
        validator(TRANSCRIPTIONS)
    with pytest.raises(KeyError):
        form_validator(EMBEDDINGS)
    with pytest.raises(KeyError):
        validator("POST /v1/nothing (application/json)")


IMAGE_URL = "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/Gfp-wisconsin-madison-the-nature-boardwalk.jpg"
WEATHER_TOOL = {"type": "function", "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "parameters": {"type": "object", "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                    "required": ["location", "unit"]}}
# Requests from OpenAI's API reference and guides (trimmed to what matters for validation).
DOCS_EXAMPLES = [
    (EMBEDDINGS, {"input": "The food was delicious and the waiter...", "model": "text-embedding-3-small",
                  "encoding_format": "float"}),
    (EMBEDDINGS, {"input": ["a", "b"], "model": "text-embedding-3-large", "dimensions": 256}),
    (EMBEDDINGS, {"input": [[1, 2, 3], [4]], "model": "text-embedding-ada-002"}),
    (COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 7,
                   "temperature": 0}),
    (COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b"], "stream": True, "echo": True,
                   "stop": ["\n"], "logit_bias": {"50256": -100}, "logprobs": 5, "suffix": "!"}),
    (MODERATIONS, {"input": "I want to kill them."}),
    (MODERATIONS, {"model": "omni-moderation-latest", "input": [
        {"type": "text", "text": "...text to classify goes here..."},
        {"type": "image_url", "image_url": {"url": "https://example.com/image.png"}}]}),
    (IMAGES, {"model": "gpt-image-1", "prompt": "A cute baby sea otter", "n": 1, "size": "1024x1024"}),
    (IMAGES, {"model": "dall-e-3", "prompt": "A cute baby sea otter", "quality": "hd", "style": "vivid",
              "response_format": "b64_json"}),
    (IMAGE_EDITS, {"model": "gpt-image-1.5", "images": [{"image_url": "https://example.com/a.png"},
                                                       {"file_id": "file-abc"}], "prompt": "Add a hat"}),
    (SPEECH, {"model": "gpt-4o-mini-tts", "input": "The quick brown fox jumped over the lazy dog.",
              "voice": "alloy"}),
    (SPEECH, {"model": "gpt-4o-mini-tts", "input": "Hi", "voice": {"id": "voice_123"},
              "instructions": "Speak in a cheerful and positive tone.", "response_format": "wav",
              "stream_format": "sse", "speed": 1.25}),
    (RESPONSES, {"model": "gpt-4.1", "input": "Tell me a three sentence bedtime story about a unicorn."}),
    (RESPONSES, {"model": "gpt-4.1", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is in this image?"},
        {"type": "input_image", "image_url": IMAGE_URL}]}]}),
    (RESPONSES, {"model": "gpt-4.1", "input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "file-6F2ksmvXxt4VdoqmHRw6kL"},
        {"type": "input_text", "text": "What is the first dragon in the book?"}]}]}),
    (RESPONSES, {"model": "gpt-4.1", "tools": [{"type": "web_search_preview"}],
                 "input": "What was a positive news story from today?"}),
    (RESPONSES, {"model": "gpt-4.1", "input": "What are the attributes of an ancient brown dragon?",
                 "tools": [{"type": "file_search", "vector_store_ids": ["vs_1234567890"], "max_num_results": 20}]}),
    (RESPONSES, {"model": "gpt-4.1", "instructions": "You are a helpful assistant.", "input": "Hello!",
                 "stream": True}),
    (RESPONSES, {"model": "gpt-4.1", "input": "What is the weather like in Boston today?",
                 "tools": [WEATHER_TOOL], "tool_choice": "auto"}),
    (RESPONSES, {"model": "o3-mini", "input": "How much wood would a woodchuck chuck?",
                 "reasoning": {"effort": "high"}}),
    (RESPONSES, {"model": "gpt-4.1", "previous_response_id": "resp_123", "input": [
        {"type": "function_call_output", "call_id": "call_123", "output": "{\"temperature\": 20}"}]}),
    (RESPONSES, {"model": "gpt-4.1", "input": [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{}",
         "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "20C"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
        # an output message sent back as it came (no logprobs: the openai SDK does not require them)
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "20C", "annotations": []}]}]}),
    (RESPONSES, {"model": "gpt-4.1", "input": "x", "text": {"format": {
        "type": "json_schema", "name": "math", "strict": True, "schema": {"type": "object", "properties": {}}}}}),
    (RESPONSES, {"model": "gpt-4.1", "input": "x", "tools": [
        {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.deepwiki.com/mcp",
         "require_approval": "never"},
        {"type": "code_interpreter", "container": {"type": "auto"}}, {"type": "image_generation"}]}),
    (RESPONSES, {"prompt": {"id": "pmpt_abc", "version": "2", "variables": {"customer_name": "Jane"}}}),
    (RESPONSES, {"model": "gpt-4.1", "input": "x", "conversation": "conv_123", "store": False,
                 "include": ["reasoning.encrypted_content"], "max_output_tokens": 16}),
    (CONVERSATIONS, {"metadata": {"topic": "demo"}, "items": [{"type": "message", "role": "user",
                                                               "content": "Hello!"}]}),
    (CONVERSATION, {"metadata": {"topic": "project-x"}}),
    (INPUT_TOKENS, {"model": "gpt-5", "input": "Tell me a joke."}),
    (COMPACT, {"model": "gpt-5.1-codex-max", "input": [{"role": "user", "content": "Create a landing page."}]}),
]


@pytest.mark.parametrize("key,body", DOCS_EXAMPLES)
def test_openai_examples_pass(key: str, body: dict[str, Any]) -> None:
    validator(key)(body)


# (endpoint, body, param, message): one of each kind of mistake, across the endpoints.
MISTAKES = [
    (EMBEDDINGS, {"input": "x"}, "model", "Invalid 'model': is required."),
    (EMBEDDINGS, {"model": 5, "input": "x"}, "model", "Invalid 'model': must be a string."),
    (EMBEDDINGS, {"model": "m", "input": ["a", "b", 3]}, "input[2]", "Invalid 'input[2]': must be a string."),
    (EMBEDDINGS, {"model": "m", "input": [[1, 2], "x"]}, "input[1]",
     "Invalid 'input[1]': must be a list of integers."),
    (EMBEDDINGS, {"model": "m", "input": 5}, "input", "Invalid 'input': must be a string, a list of strings, "
     "a list of integers or a list of lists of integers."),
    (EMBEDDINGS, {"model": "m", "input": []}, "input", "Invalid 'input': must have at least 1 item."),
    (EMBEDDINGS, {"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format",
     "Invalid 'encoding_format': must be one of 'float', 'base64', got 'hex'."),
    (EMBEDDINGS, {"model": "m", "input": "x", "dimensions": 0}, "dimensions",
     "Invalid 'dimensions': must be at least 1, got 0."),
    (EMBEDDINGS, {"model": "m", "input": "x", "dimensions": 2.5}, "dimensions",
     "Invalid 'dimensions': must be an integer."),
    (EMBEDDINGS, {"model": "m", "input": "x", "dimensions": True}, "dimensions",
     "Invalid 'dimensions': must be an integer."),
    (COMPLETIONS, {"model": "m"}, "prompt", "Invalid 'prompt': is required."),
    (COMPLETIONS, {"model": "m", "prompt": "x", "logprobs": 6}, "logprobs",
     "Invalid 'logprobs': must be between 0 and 5, got 6."),
    (COMPLETIONS, {"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop",
     "Invalid 'stop': must have at most 4 items, got 5."),
    (COMPLETIONS, {"model": "m", "prompt": [[1, 2], []]}, "prompt[1]",
     "Invalid 'prompt[1]': must have at least 1 item."),
    (COMPLETIONS, {"model": "m", "prompt": "x", "logit_bias": {"50256": "x"}}, "logit_bias.50256",
     "Invalid 'logit_bias.50256': must be an integer."),
    (COMPLETIONS, {"model": "m", "prompt": "x", "echo": "yes"}, "echo", "Invalid 'echo': must be a boolean or null."),
    (SPEECH, {"model": "tts-1", "input": "x" * 4097, "voice": "alloy"}, "input",
     "Invalid 'input': must be at most 4096 characters long, got 4097."),
    (SPEECH, {"model": "tts-1", "input": "x", "voice": "alloy", "speed": 5}, "speed",
     "Invalid 'speed': must be between 0.25 and 4, got 5."),
    (SPEECH, {"model": "tts-1", "input": "x", "voice": 5}, "voice", "Invalid 'voice': must be a string or an object."),
    (SPEECH, {"model": "tts-1", "input": "x", "voice": {"id": 5}}, "voice.id", "Invalid 'voice.id': must be a string."),
    (SPEECH, {"model": "tts-1", "input": "x", "voice": "v", "response_format": True}, "response_format",
     "Invalid 'response_format': must be one of 'mp3', 'opus', 'aac', 'flac', 'wav', 'pcm', got True."),
    (IMAGES, {"prompt": "p", "n": 11}, "n", "Invalid 'n': must be between 1 and 10, got 11."),
    (IMAGES, {"prompt": "p", "style": "dark"}, "style",
     "Invalid 'style': must be one of 'vivid', 'natural', null, got 'dark'."),
    (IMAGE_EDITS, {"images": [], "prompt": "p"}, "images", "Invalid 'images': must have at least 1 item."),
    (IMAGE_EDITS, {"images": [{"file_id": "f"}], "prompt": ""}, "prompt",
     "Invalid 'prompt': must be at least 1 character long."),
    (IMAGE_EDITS, {"images": [{}], "prompt": "p"}, "images[0]",
     "Invalid 'images[0]': must be an object with image_url or an object with file_id."),
    (MODERATIONS, {"input": [{"type": "video"}]}, "input[0].type",
     "Invalid 'input[0].type': must be one of 'image_url', 'text', got 'video'."),
    (MODERATIONS, {"input": [{"type": "image_url", "image_url": {}}]}, "input[0].image_url.url",
     "Invalid 'input[0].image_url.url': is required."),
    (CONVERSATIONS, {"items": [{"role": "user", "content": "x"}] * 21}, "items",
     "Invalid 'items': must have at most 20 items, got 21."),
    (CONVERSATION, {"metadata": {"k": 5}}, "metadata.k", "Invalid 'metadata.k': must be a string."),
    (INPUT_TOKENS, {"truncation": "sometimes"}, "truncation",
     "Invalid 'truncation': must be one of 'auto', 'disabled', got 'sometimes'."),
    (COMPACT, {"model": "m", "prompt_cache_key": "k" * 65}, "prompt_cache_key",
     "Invalid 'prompt_cache_key': must be at most 64 characters long, got 65."),
    (RESPONSES, [1], None, "Invalid request body: must be an object."),
    (RESPONSES, {"model": 5}, "model", "Invalid 'model': must be a string."),
    (RESPONSES, {"temperature": 3}, "temperature", "Invalid 'temperature': must be between 0 and 2, got 3."),
    (RESPONSES, {"max_output_tokens": 3}, "max_output_tokens",
     "Invalid 'max_output_tokens': must be at least 16, got 3."),
    (RESPONSES, {"input": [{"role": "user", "content": 5}]}, "input[0].content",
     "Invalid 'input[0].content': must be a string or a list of objects with type one of 'input_file', "
     "'input_image', 'input_text'."),
    (RESPONSES, {"input": [{"role": "robot", "content": "x"}]}, "input[0].role",
     "Invalid 'input[0].role': must be one of 'user', 'assistant', 'system', 'developer', got 'robot'."),
    (RESPONSES, {"input": [{"content": "hi"}]}, "input[0].role", "Invalid 'input[0].role': is required."),
    (RESPONSES, {"input": [{"type": "function_call_output", "call_id": 5, "output": "x"}]}, "input[0].call_id",
     "Invalid 'input[0].call_id': must be a string or null."),
    (RESPONSES, {"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
     "input[0].content[0].text", "Invalid 'input[0].content[0].text': must be a string."),
    (RESPONSES, {"tools": [{"type": "function"}]}, "tools[0].name", "Invalid 'tools[0].name': is required."),
    (RESPONSES, {"tools": [{"type": "mcp", "server_label": "x", "tunnel_id": "bad"}]}, "tools[0].tunnel_id",
     "Invalid 'tools[0].tunnel_id': must match the pattern '^tunnel_[a-z0-9]{32}$'."),
    (RESPONSES, {"tool_choice": "sometimes"}, "tool_choice",
     "Invalid 'tool_choice': must be one of 'none', 'auto', 'required', got 'sometimes'."),
    (RESPONSES, {"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema",
     "Invalid 'text.format.schema': is required."),
    (RESPONSES, {"reasoning": {"effort": "maximal"}}, "reasoning.effort",
     "Invalid 'reasoning.effort': must be one of 'none', 'minimal', 'low', 'medium', 'high', 'xhigh', 'max', "
     "got 'maximal'."),
    (RESPONSES, {"conversation": 5}, "conversation", "Invalid 'conversation': must be a string, an object or null."),
    (RESPONSES, {"input": [{"type": "file_search_call", "id": "f", "status": "completed", "queries": [],
                            "results": [{"attributes": {str(i): "v" for i in range(17)}}]}]},
     "input[0].results[0].attributes", "Invalid 'input[0].results[0].attributes': must have at most 16 keys, got 17."),
    (RESPONSES, {"tools": [{"type": "file_search", "vector_store_ids": ["v"], "filters": {
        "type": "and", "filters": [{"type": "eq", "key": "a", "value": 1},
                                   {"type": "or", "filters": [{"type": "x"}]}]}}]},
     "tools[0].filters.filters[1].filters[0].type",
     "Invalid 'tools[0].filters.filters[1].filters[0].type': must be one of 'eq', 'gt', 'gte', 'in', 'lt', 'lte', "
     "'ne', 'nin', 'and', 'or', got 'x'."),
]


@pytest.mark.parametrize("key,body,param,message", MISTAKES)
def test_each_mistake_is_a_400_naming_the_field(key: str, body: Any, param: Any, message: str) -> None:
    error = error_of(key, body)
    assert (error.status, error.type, error.code) == (400, "invalid_request_error", "invalid_value")
    assert (error.param, error.message) == (param, message)
    assert orjson.loads(error.body())["error"]["param"] == param


def test_a_missing_tag_names_the_tag_and_what_it_may_be() -> None:
    error = error_of(RESPONSES, {"tools": [{"name": "f"}]})
    assert error.param == "tools[0].type"
    assert error.message.startswith("Invalid 'tools[0].type': is required, one of 'function', 'file_search', ")
    unknown = error_of(RESPONSES, {"input": [{"type": "bogus"}]})
    assert unknown.param == "input[0].type"
    assert "'function_call_output'" in unknown.message and unknown.message.endswith("got 'bogus'.")


def test_a_clients_long_key_or_value_is_cut_short_in_the_error() -> None:
    error = error_of(RESPONSES, {"metadata": {"k" * 10_000: 5}})
    assert error.param is not None and error.param.startswith("metadata.kkk") and len(error.param) <= 80
    assert len(error.message) < 200
    value = error_of(RESPONSES, {"truncation": "x" * 10_000})
    assert len(value.message) < 200 and "got 'xxx" in value.message


def root_fields(key: str) -> tuple[dict[str, Any], frozenset[str]]:
    compiler, requests = validation._document()
    root = compiler.define(requests[key])
    return root.fields(), root.requires()


@pytest.mark.parametrize("key", JSON_KEYS)
def test_null_for_every_optional_field_passes(key: str) -> None:
    fields, required = root_fields(key)
    body = dict(MINIMAL[key])
    body.update({name: None for name in fields if name not in required})
    assert None in body.values()
    validator(key)(body)


NESTED_NULLS = [
    (RESPONSES, {"input": [{"role": "user", "content": "hi", "type": None, "phase": None}],
                 "tools": [{"type": "function", "name": "f", "description": None, "parameters": None, "strict": None}],
                 "reasoning": {"effort": None, "summary": None}, "text": {"format": None, "verbosity": None},
                 "stream_options": {"include_obfuscation": None}, "metadata": {"k": None}}),
    (RESPONSES, {"input": [{"type": "function_call_output", "call_id": "c", "output": "x", "id": None,
                            "status": None}]}),
    (COMPLETIONS, {"model": "m", "prompt": "x", "stream_options": {"include_usage": None},
                   "logit_bias": {"50256": None}}),
    (MODERATIONS, {"input": [{"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": None}}]}),
    (IMAGE_EDITS, {"images": [{"file_id": "f", "image_url": None}], "prompt": "p", "mask": None}),
    (SPEECH, {"model": "tts-1", "input": "x", "voice": {"id": "v", "name": None}}),
]


@pytest.mark.parametrize("key,body", NESTED_NULLS)
def test_null_for_optional_fields_passes_at_every_depth(key: str, body: dict[str, Any]) -> None:
    validator(key)(body)


def test_null_for_a_required_field_that_may_not_be_null_is_refused() -> None:
    assert error_of(EMBEDDINGS, {"model": None, "input": "x"}).param == "model"
    assert error_of(RESPONSES, {"tools": [{"type": "function", "name": None}]}).param == "tools[0].name"
    assert error_of(RESPONSES, {"input": [{"role": None, "content": "x"}]}).param == "input[0].role"


UNKNOWN_FIELDS = [
    # CreateEmbeddingRequest says additionalProperties: false; vLLM and Ollama take more.
    (EMBEDDINGS, {"model": "m", "input": "x", "truncate_prompt_tokens": 512, "options": {"num_ctx": 4096}}),
    (RESPONSES, {"model": "m", "input": [{"role": "user", "content": "hi", "x_trace": {"id": 1}}],
                 "tools": [{"type": "function", "name": "f", "x_cache": True}], "top_k": 40,
                 "reasoning": {"effort": "low", "budget": 1}}),
    (SPEECH, {"model": "tts-1", "input": "x", "voice": {"id": "v", "x": 1}, "sample_rate": 24000}),
    (IMAGE_EDITS, {"images": [{"file_id": "f", "weight": 0.5}], "prompt": "p", "seed": 7}),
    (RESPONSES, {"tools": [{"type": "file_search", "vector_store_ids": ["v"], "filters": {
        "type": "eq", "key": "a", "value": 1, "x": 2}}]}),
]


@pytest.mark.parametrize("key,body", UNKNOWN_FIELDS)
def test_unknown_fields_pass_at_every_depth(key: str, body: dict[str, Any]) -> None:
    validator(key)(body)


def test_requirements_openai_does_not_enforce_are_relaxed_and_no_others() -> None:
    # OpenAI's image-input example leaves out `detail`; its function-tool example `strict` and
    # `parameters` (both may be null, so may be left out).
    validator(RESPONSES)({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE_URL}]}]})
    validator(RESPONSES)({"tools": [{"type": "function", "name": "f"}]})
    # The same definitions still require what OpenAI requires.
    assert error_of(RESPONSES, {"tools": [{"type": "function", "strict": True}]}).param == "tools[0].name"
    assert error_of(RESPONSES, {"input": [{"role": "user", "content": [
        {"type": "input_image", "detail": "x"}]}]}).param == "input[0].content[0].detail"
    assert error_of(RESPONSES, {"input": [{"type": "message", "id": "m", "role": "assistant", "status": "completed",
                                           "content": [{"type": "output_text", "text": "x"}]}]}).param == \
        "input[0].content[0].annotations"


def test_an_integer_may_be_written_as_a_float_without_a_fraction_but_never_as_a_boolean() -> None:
    validator(EMBEDDINGS)({"model": "m", "input": [[1.0, 2]], "dimensions": 256.0})
    assert error_of(EMBEDDINGS, {"model": "m", "input": [[1.5]]}).param == "input[0][0]"
    assert error_of(IMAGES, {"prompt": "p", "n": True}).param == "n"


def test_a_value_two_alternatives_accept_passes() -> None:
    # oneOf read as anyOf: this item is both an EasyInputMessage and an InputMessage.
    validator(RESPONSES)({"input": [{"type": "message", "role": "user",
                                     "content": [{"type": "input_text", "text": "hi"}]}]})


def nested_filters(levels: int, leaf: str) -> dict[str, Any]:
    """A responses request whose file_search filter nests `levels` compound filters around `leaf`."""
    raw = '{"type":"and","filters":[' * levels + leaf + "]}" * levels
    result: dict[str, Any] = orjson.loads('{"tools":[{"type":"file_search","vector_store_ids":["v"],"filters":'
                                          + raw + "}]}")
    return result


def test_deep_nesting_is_a_400_and_leaves_the_validator_working() -> None:
    good, bad = '{"type":"eq","key":"a","value":1}', '{"type":"x"}'
    validator(RESPONSES)(nested_filters(20, good))  # the schema is recursive: any depth is valid
    error = error_of(RESPONSES, nested_filters(400, good))  # within orjson's limit, beyond the stack's
    assert error.status == 400 and error.message == "The request body is nested too deeply to check."
    deep = error_of(RESPONSES, nested_filters(3, bad))
    assert deep.param == "tools[0].filters.filters[0].filters[0].filters[0].type"
    assert "must be one of 'eq'" in deep.message


def form_error(key: str, fields: dict[str, list[str]], files: set[str]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        form_validator(key)(fields, files)
    return caught.value


GOOD_FORMS = [
    (TRANSCRIPTIONS, {"model": ["gpt-4o-transcribe"]}, {"file"}),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "response_format": ["verbose_json"], "temperature": ["0.5"],
                      "timestamp_granularities[]": ["word", "segment"], "language": ["en"]}, {"file"}),
    (TRANSCRIPTIONS, {"model": ["gpt-4o-transcribe"], "include[]": ["logprobs"], "stream": ["true"],
                      "chunking_strategy": ["auto"], "known_speaker_names[]": ["a", "b"]}, {"file"}),
    (TRANSCRIPTIONS, {"model": ["gpt-4o-transcribe"], "chunking_strategy[type]": ["server_vad"],
                      "chunking_strategy[threshold]": ["0.4"], "chunking_strategy[prefix_padding_ms]": ["300"]},
     {"file"}),
    (TRANSCRIPTIONS, {"model": ["gpt-4o-transcribe"], "chunking_strategy": ['{"type": "server_vad"}'],
                      "timestamp_granularities": ["word"], "temperature": [""], "x_vendor_option": ["1"]}, {"file"}),
    (TRANSLATIONS, {"model": ["whisper-1"], "prompt": ["Hello"], "response_format": ["srt"], "temperature": ["0"]},
     {"file"}),
    (IMAGE_EDITS_FORM, {"model": ["gpt-image-1"], "prompt": ["Create a lovely gift basket"]},
     {"image[]", "image[1]"}),
    (IMAGE_EDITS_FORM, {"model": ["dall-e-2"], "prompt": ["A sunlit indoor lounge area"], "n": ["1"],
                        "size": ["1024x1024"], "stream": ["false"], "output_compression": ["80"]}, {"image", "mask"}),
]


@pytest.mark.parametrize("key,fields,files", GOOD_FORMS)
def test_forms_read_text_as_the_upstream_does(key: str, fields: dict[str, list[str]], files: set[str]) -> None:
    form_validator(key)(fields, files)


BAD_FORMS = [
    (TRANSCRIPTIONS, {"model": ["whisper-1"]}, set(), "file", "Invalid 'file': is required, as a file part."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "file": ["audio.mp3"]}, set(), "file",
     "Invalid 'file': must be a file, sent as a file part."),
    (TRANSCRIPTIONS, {}, {"file"}, "model", "Invalid 'model': is required."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "temperature": ["hot"]}, {"file"}, "temperature",
     "Invalid 'temperature': must be a number."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "timestamp_granularities[]": ["word", "char"]}, {"file"},
     "timestamp_granularities[1]",
     "Invalid 'timestamp_granularities[1]': must be one of 'word', 'segment', got 'char'."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "response_format": ["xml"]}, {"file"}, "response_format",
     "Invalid 'response_format': must be one of 'json', 'text', 'srt', 'verbose_json', 'vtt', 'diarized_json', "
     "got 'xml'."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "stream": ["maybe"]}, {"file"}, "stream",
     "Invalid 'stream': must be a boolean or null."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "chunking_strategy[type]": ["server_vad"],
                      "chunking_strategy[threshold]": ["high"]}, {"file"}, "chunking_strategy.threshold",
     "Invalid 'chunking_strategy.threshold': must be a number."),
    (TRANSCRIPTIONS, {"model": ["whisper-1"], "known_speaker_names[]": ["a", "b", "c", "d", "e"]}, {"file"},
     "known_speaker_names", "Invalid 'known_speaker_names': must have at most 4 items, got 5."),
    (IMAGE_EDITS_FORM, {"prompt": ["p"]}, set(), "image", "Invalid 'image': is required, as a file part."),
    (IMAGE_EDITS_FORM, {"prompt": ["p"], "n": ["11"]}, {"image[]"}, "n", "Invalid 'n': must be between 1 and 10, "
     "got 11."),
    (IMAGE_EDITS_FORM, {"prompt": ["p"], "n": ["1", "2.5"]}, {"image"}, "n",
     "Invalid 'n': must be an integer or null."),
    (TRANSLATIONS, {"model": ["whisper-1"], "temperature": ["1e999"]}, {"file"}, "temperature",
     "Invalid 'temperature': must be a number."),
]


@pytest.mark.parametrize("key,fields,files,param,message", BAD_FORMS)
def test_form_mistakes_are_a_400_naming_the_field(key: str, fields: dict[str, list[str]], files: set[str],
                                                  param: str, message: str) -> None:
    error = form_error(key, fields, files)
    assert (error.status, error.param, error.message) == (400, param, message)


def compiled(schema: dict[str, Any], definitions: Any = None) -> Any:
    """The check of an inline schema, raising ApiError as the endpoint validators do."""
    check = Compiler(definitions or {}).compile(schema).built()

    def run(value: Any) -> None:
        try:
            check(value)
        except vol.Invalid as error:
            raise validation.api_error(error) from None
    return run


def refused(schema: dict[str, Any], value: Any, definitions: Any = None) -> str:
    with pytest.raises(ApiError) as caught:
        compiled(schema, definitions)({"v": value})
    return caught.value.message


def test_keywords_the_file_does_not_use_yet_work_as_json_schema_says() -> None:
    def holder(schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {"v": schema}, "required": ["v"]}
    compiled(holder({"const": "x"}))({"v": "x"})
    assert refused(holder({"const": "x"}), "y") == "Invalid 'v': must be 'x', got 'y'."
    assert refused(holder({"const": 1}), True) == "Invalid 'v': must be 1, got True."  # true is not 1
    bounds = holder({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})
    compiled(bounds)({"v": 0.5})
    assert refused(bounds, 0) == "Invalid 'v': must be greater than 0 and less than 1, got 0."
    assert refused(bounds, 1) == "Invalid 'v': must be greater than 0 and less than 1, got 1."
    openapi = holder({"type": "integer", "minimum": 0, "exclusiveMinimum": True})  # OpenAPI 3.0's flag
    assert refused(openapi, 0) == "Invalid 'v': must be greater than 0, got 0."
    either = holder({"type": ["string", "integer"]})
    compiled(either)({"v": 3})
    assert refused(either, 1.5) == "Invalid 'v': must be a string or an integer."
    assert refused(holder({"type": "string", "nullable": True}), 5) == "Invalid 'v': must be a string or null."
    compiled(holder({"type": "string", "nullable": True}))({"v": None})  # required, and null is allowed
    compiled(holder({"type": "string", "x-unknown-keyword": {"deny": True}}))({"v": "x"})
    compiled(holder({"type": "string", "not": {"const": "x"}}))({"v": "x"})  # `not` is not enforced


def test_all_of_merges_objects_so_required_and_null_come_from_every_branch() -> None:
    definitions = {
        "Base": {"type": "object", "properties": {"model": {"type": "string"}, "n": {"type": "integer"}}},
        "Request": {"allOf": [{"$ref": "#/$defs/Base"}, {"type": "object", "required": ["model"],
                                                          "properties": {"n": {"minimum": 1}}}]},
    }
    check = compiled({"$ref": "#/$defs/Request"}, definitions)
    check({"model": "m", "n": None})  # optional in both branches: null is "not set"
    for value, message in (({"model": None}, "Invalid 'model': must be a string."),  # required in one, typed in one
                           ({"model": "m", "n": 0}, "Invalid 'n': must be at least 1, got 0."),
                           ({"model": "m", "n": 2.5}, "Invalid 'n': must be an integer.")):
        with pytest.raises(ApiError) as caught:
            check(value)
        assert caught.value.message == message


def test_recursive_references_compile_and_check_any_depth() -> None:
    definitions = {"Tree": {"type": "object", "properties": {"name": {"type": "string"}, "children": {
        "type": "array", "items": {"$ref": "#/$defs/Tree"}}}, "required": ["name"]},
                   "Loop": {"anyOf": [{"$ref": "#/$defs/Loop"}, {"type": "string"}]}}
    tree = compiled({"$ref": "#/$defs/Tree"}, definitions)
    tree({"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]})
    with pytest.raises(ApiError) as caught:
        tree({"name": "a", "children": [{"name": "b", "children": [{}]}]})
    assert caught.value.message == "Invalid 'children[0].children[0].name': is required."
    compiled({"$ref": "#/$defs/Loop"}, definitions)("x")  # a reference to itself does not recurse forever


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


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(JSON_KEYS), body=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_any_json_object_is_accepted_or_a_400(key: str, body: dict[str, Any]) -> None:
    accepted_or_a_400(lambda: validator(key)(body))


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A minimal request with a few of its endpoint's own fields set to arbitrary (plausible) JSON."""
    key = draw(st.sampled_from(JSON_KEYS))
    body = dict(MINIMAL[key])
    fields = sorted(root_fields(key)[0])
    for name in draw(st.lists(st.sampled_from(fields), max_size=3)):
        body[name] = draw(json_values | st.lists(json_values, max_size=3))
    return key, body


@settings(max_examples=400, deadline=None)
@given(near_valid())
def test_near_valid_requests_are_accepted_or_a_400_and_left_unchanged(case: tuple[str, dict[str, Any]]) -> None:
    key, body = case
    before = copy.deepcopy(body)
    accepted_or_a_400(lambda: validator(key)(body))
    assert body == before


@st.composite
def forms(draw: st.DrawFn) -> tuple[str, dict[str, list[str]], set[str]]:
    key = draw(st.sampled_from(FORM_KEYS))
    names = sorted(root_fields(key)[0])
    spelled = st.sampled_from(names).flatmap(lambda name: st.sampled_from(
        [name, f"{name}[]", f"{name}[0]", f"{name}[type]", f"{name}[threshold]", f"{name}[a][b]"]))
    texts = st.text(max_size=8) | st.sampled_from(["true", "0.5", "1e999", "-3", "[\"word\"]", "{\"type\": 1}",
                                                   "null", "", " 7 ", "9" * 5000])
    fields = draw(st.dictionaries(spelled | st.text(max_size=6), st.lists(texts, min_size=1, max_size=3),
                                  max_size=5))
    files = draw(st.sets(st.sampled_from([*names, "image[]", "x"]), max_size=3))
    return key, fields, files


@settings(max_examples=300, deadline=None)
@given(forms())
def test_any_form_is_accepted_or_a_400(case: tuple[str, dict[str, list[str]], set[str]]) -> None:
    key, fields, files = case
    accepted_or_a_400(lambda: form_validator(key)(fields, files))
