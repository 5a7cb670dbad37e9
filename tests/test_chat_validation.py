"""Chat completions take null for every optional field, as OpenAI's schema does, through the running gateway."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from .harness import Stack, openai_controller

# Every optional field of OpenAI's chat request schema (openai-chat-schemas.json).
OPTIONAL_FIELDS = [
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "max_completion_tokens",
    "max_tokens", "metadata", "modalities", "moderation", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options",
    "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
]
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gateway(stack: Stack) -> Stack:
    stack.fake()
    stack.gateway({"controllers": [openai_controller(stack.fakes[0])]})
    return stack


def relayed(stack: Stack) -> dict[str, Any]:
    seen: dict[str, Any] = stack.fakes[0].chat_requests[-1].json
    return seen


def test_null_for_every_optional_field_is_relayed_as_sent(gateway: Stack) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, **dict.fromkeys(OPTIONAL_FIELDS)}
    status, _, answer = gateway.request("POST", "/v1/chat/completions", body)
    assert status == 200, answer
    assert relayed(gateway) == body


def test_null_inside_optional_objects_and_integers_written_as_floats_pass(gateway: Stack) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "stream_options": {"include_usage": None},
            "logit_bias": {"50256": None, "15": -100.0}, "max_tokens": 64.0, "top_logprobs": 2.0}
    status, _, answer = gateway.request("POST", "/v1/chat/completions", body)
    assert status == 200, answer
    assert relayed(gateway) == body


def test_a_wrong_value_is_still_refused_where_null_passes(gateway: Stack) -> None:
    for field, value in (("response_format", "json"), ("parallel_tool_calls", "yes"), ("user", 5),
                         ("stream_options", {"include_usage": "yes"}), ("max_tokens", 1.5)):
        status, _, answer = gateway.request("POST", "/v1/chat/completions",
                                            {"model": "fake-model", "messages": MESSAGES, field: value})
        assert status == 400, (field, answer)
        assert field.encode() in answer
    assert gateway.fakes[0].chat_requests == []


def test_the_openai_client_sending_none_gets_an_answer(gateway: Stack) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        completion = client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], response_format=None,
            user=None, stop=None, tools=None, parallel_tool_calls=None, logit_bias=None, seed=None)
    assert completion.choices[0].message.content
    seen = relayed(gateway)
    assert seen["response_format"] is None and seen["parallel_tool_calls"] is None and seen["user"] is None
