"""Request validation of every OpenAI endpoint: OpenAI's examples pass, each mistake is a 400 naming the
field, and null and unknown fields pass."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from chatgpt_apiserver.endpoints.validation import validator

from .endpoint_cases import (
    COMPACT,
    COMPLETIONS,
    CONVERSATION,
    CONVERSATIONS,
    EMBEDDINGS,
    IMAGE_EDITS,
    IMAGES,
    INPUT_TOKENS,
    JSON_KEYS,
    MINIMAL,
    MODERATIONS,
    RESPONSES,
    SPEECH,
    error_of,
    root_fields,
)

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
