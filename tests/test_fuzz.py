"""Property-based tests: no client input ever produces a 500."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatgpt_apiserver.errors import ApiError
from chatgpt_apiserver.web.schemas import parse_chat_request

from .harness import LoopThread, Stack

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
FIELDS = ["model", "messages", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens",
          "max_completion_tokens", "stop", "logit_bias", "tools", "response_format", "seed", "user", "logprobs",
          "top_logprobs", "presence_penalty", "frequency_penalty", "parallel_tool_calls"]
GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with a few fields, or message parts, replaced by arbitrary JSON."""
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        body[field] = draw(json_values)
    if draw(st.booleans()):
        message = {"role": draw(st.sampled_from(["user", "assistant", "tool", "x"])),
                   "content": draw(json_values)}
        body["messages"] = [message, *(body["messages"] if isinstance(body["messages"], list) else [])]
    return body


def check(raw: bytes) -> None:
    try:
        parse_chat_request(raw)
    except ApiError as error:
        assert error.status == 400 and error.type == "invalid_request_error"
        assert isinstance(error.message, str) and error.message


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_any_json_is_accepted_or_a_400(value: Any) -> None:
    check(orjson.dumps(value))


@settings(max_examples=400, deadline=None)
@given(near_valid())
def test_near_valid_requests_are_accepted_or_a_400_naming_a_field(body: dict[str, Any]) -> None:
    try:
        parse_chat_request(orjson.dumps(body))
    except ApiError as error:
        assert error.status == 400 and error.param


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_accepted_or_a_400(raw: bytes) -> None:
    check(raw)


@pytest.fixture(scope="module")
def server(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(loop_thread, Path(tmp_path_factory.mktemp("fuzz")))
    stack.gateway({"client_keys": ["good-key"], "controllers": [
        {"type": "mock", "config": {"tokens_per_second": 100000, "first_token_delay": 0}}]})
    yield stack
    stack.close()


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=near_valid() | json_values, headers=st.dictionaries(
    st.sampled_from(["X-Request-Id", "Authorization", "Content-Type", "Origin", "Accept", "X-Whatever"]),
    header_text, max_size=4))
def test_over_http_no_client_input_is_a_500(server: Stack, body: Any, headers: dict[str, str]) -> None:
    headers.setdefault("Authorization", "Bearer good-key")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", "/v1/chat/completions", body=orjson.dumps(body), headers=headers)
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    assert response.status < 500, answer
    if response.status >= 400:
        assert set(orjson.loads(answer)["error"]) == {"message", "type", "param", "code"}
