"""End to end with the official openai client (sync and async) against fake upstreams."""

from __future__ import annotations

import asyncio

import openai
import orjson
import pytest

from .fake_upstream import Cue
from .harness import Stack, openai_controller

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="client-key", max_retries=0, timeout=20)


def test_non_streaming_relays_the_upstream_answer(stack: Stack) -> None:
    fake = stack.fake("up-a")
    fake.default = Cue(text="hi <there> & you")
    stack.gateway({"controllers": [openai_controller(fake)]})
    raw = client(stack).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    answer = raw.parse()
    assert answer.choices[0].message.content == "hi <there> & you"
    assert answer.usage is not None and answer.usage.total_tokens == 12
    assert raw.headers["x-chatgpt-apiserver-controller"] == "up-a"
    assert raw.headers["x-request-id"]
    seen = fake.chat_requests[0]
    assert seen.headers["Authorization"] == "Bearer sk-test-up-a-0123456789abcdef"
    assert seen.headers["X-Request-Id"] == raw.headers["x-request-id"]
    assert seen.json["model"] == "gpt-4o"


def test_upstream_bytes_are_relayed_unchanged(stack: Stack) -> None:
    fake = stack.fake()
    body = b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[],"note":"\\u003c <b>"}'
    fake.default = Cue(body=body)
    stack.gateway({"controllers": [openai_controller(fake)]})
    status, headers, got = stack.request("POST", "/v1/chat/completions", {"model": "m", "messages": MESSAGES})
    assert status == 200 and got == body
    assert headers["content-type"].startswith("application/json")


def test_streaming_with_the_sync_client(stack: Stack) -> None:
    fake = stack.fake()
    fake.default = Cue(mode="stream", events=5, text="w")
    stack.gateway({"controllers": [openai_controller(fake)]})
    pieces = []
    with client(stack).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as events:
        for event in events:
            if event.choices and event.choices[0].delta.content:
                pieces.append(event.choices[0].delta.content)
    assert "".join(pieces) == "w0 w1 w2 w3 w4 "


def test_streaming_with_the_async_client_and_usage(stack: Stack) -> None:
    fake = stack.fake()
    fake.default = Cue(mode="stream", events=4)
    stack.gateway({"controllers": [openai_controller(fake)]})

    async def run() -> tuple[list[str], object]:
        async with openai.AsyncOpenAI(base_url=stack.base_url, api_key="k", max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
            texts, usage = [], None
            async for event in stream:
                if event.choices and event.choices[0].delta.content:
                    texts.append(event.choices[0].delta.content)
                if event.usage:
                    usage = event.usage
            return texts, usage

    texts, usage = asyncio.run(run())
    assert len(texts) == 4
    assert usage is not None and usage.completion_tokens == 4  # type: ignore[attr-defined]
    assert fake.chat_requests[0].json["stream_options"] == {"include_usage": True}


def test_stream_headers_and_wire_format(stack: Stack) -> None:
    fake = stack.fake()
    fake.default = Cue(mode="stream", events=2, chunked_bytes=7)
    stack.gateway({"controllers": [openai_controller(fake)]})
    status, headers, body = stack.request(
        "POST", "/v1/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    events = body.split(b"\n\n")
    assert events[-2] == b"data: [DONE]" and events[-1] == b""
    assert all(event.startswith(b"data: ") for event in events[:-1])
    assert len(events) == 2 + 2 + 1 + 1  # role, 2 deltas, finish, DONE, trailing


def test_tools_and_response_format_pass_through_untouched(stack: Stack) -> None:
    fake = stack.fake()
    stack.gateway({"controllers": [openai_controller(fake)]})
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Look it up",
                                               "parameters": {"type": "object",
                                                              "properties": {"q": {"type": "string"}}},
                                               "strict": True}}]
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    client(stack).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, tools=tools, tool_choice="auto",  # type: ignore[arg-type]
        response_format=response_format, seed=7,  # type: ignore[arg-type]
        extra_body={"brand_new_field": {"nested": [1, 2, 3]}})
    sent = fake.chat_requests[0].json
    assert sent["tools"] == tools
    assert sent["response_format"] == response_format
    assert sent["seed"] == 7 and sent["tool_choice"] == "auto"
    assert sent["brand_new_field"] == {"nested": [1, 2, 3]}


def test_request_body_reaches_the_upstream_byte_for_byte(stack: Stack) -> None:
    fake = stack.fake()
    stack.gateway({"controllers": [openai_controller(fake)]})
    body = b'{"model":"m",  "messages":[{"role":"user","content":"\\u00e9 <x>"}], "zz_unknown": 1.50}'
    status, _headers, _ = stack.request("POST", "/v1/chat/completions", body)
    assert status == 200
    assert fake.chat_requests[0].body == body


def test_n_greater_than_one(stack: Stack) -> None:
    fake = stack.fake()
    stack.gateway({"controllers": [openai_controller(fake)]})
    answer = client(stack).chat.completions.create(model="gpt-4o", messages=MESSAGES, n=3)
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert fake.chat_requests[0].json["n"] == 3


@pytest.mark.parametrize("whole", [int, float])  # 2.0 is an integer to OpenAI's schema, and to the mock
@pytest.mark.parametrize("stream", [False, True])
def test_mock_controller_honours_n_and_max_tokens(stack: Stack, stream: bool, whole: type) -> None:
    stack.gateway({"controllers": [{"type": "mock", "config": {"tokens_per_second": 1000, "first_token_delay": 0}}]})
    c = client(stack)
    if not stream:
        answer = c.chat.completions.create(model="any", messages=MESSAGES, n=whole(2), max_tokens=whole(4))
        assert len(answer.choices) == 2
        assert len(answer.choices[0].message.content.split()) == 4  # type: ignore[union-attr]
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None and answer.usage.completion_tokens == 8
        return
    texts: dict[int, str] = {0: "", 1: ""}
    usage = None
    for event in c.chat.completions.create(model="any", messages=MESSAGES, n=whole(2), max_tokens=whole(3), stream=True,
                                           stream_options={"include_usage": True}):
        for choice in event.choices:
            texts[choice.index] += choice.delta.content or ""
        usage = event.usage or usage
    assert len(texts[0].split()) == 3 and texts[0] == texts[1]
    assert usage is not None and usage.completion_tokens == 6


def test_models_lists_declared_and_discovered_models(stack: Stack) -> None:
    declared = stack.fake("declared")
    discovered = stack.fake("discovered", model_ids=("up-model-1", "up-model-2"))
    stack.gateway({"controllers": [
        openai_controller(declared, models=["gpt-4o", "gpt-4o-mini"]),
        openai_controller(discovered),
    ]})
    models = client(stack).models.list()
    ids = sorted(model.id for model in models.data)
    assert ids == ["gpt-4o", "gpt-4o-mini", "up-model-1", "up-model-2"]
    assert discovered.requests[0].path == "/v1/models"
    assert discovered.requests[0].headers["Authorization"].startswith("Bearer sk-test-discovered")


def test_status_health_and_ready(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]})
    for path, expected in (("/status", {"status": "ok"}), ("/healthz", {"status": "ok"})):
        status, _, body = stack.request("GET", path)
        assert status == 200 and orjson.loads(body) == expected
    status, _, body = stack.request("GET", "/readyz")
    assert status == 200 and orjson.loads(body)["status"] == "ready"


def test_ready_while_controllers_cool_down_and_not_once_every_one_is_disabled(stack: Stack) -> None:
    limited, rejecting = stack.fake("limited"), stack.fake("rejecting")
    limited.default = Cue(mode="status", status=429, headers={"retry-after": "30"})
    stack.gateway({"controllers": [openai_controller(limited)]}, "--max-queue-wait", "0.2")
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 429
    status, _, body = stack.request("GET", "/readyz")  # cooling down, shared by every instance: requests wait
    assert status == 200 and orjson.loads(body)["status"] == "ready"
    assert stack.running is not None
    stack.loop.run(stack.running.stop(grace=1.0))
    rejecting.default = Cue(mode="status", status=401)
    stack.gateway({"controllers": [openai_controller(rejecting)]})
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] >= 400
    status, _, body = stack.request("GET", "/readyz")
    assert status == 503 and "every controller is disabled" in orjson.loads(body)["reason"], body


def test_the_upstreams_request_id_is_relayed(stack: Stack) -> None:
    openai_up, azure_up, odd_up = stack.fake("openai"), stack.fake("azure"), stack.fake("odd")
    openai_up.default = Cue(mode="stream", events=2, headers={"x-request-id": "req_5f0e7a"})
    azure_up.default = Cue(headers={"apim-request-id": "0b9d3c55-6f0e-4c9a-9a1e-2f6d1c0a7b3e"})
    odd_up.default = Cue(headers={"x-request-id": "has spaces; and=more"})
    stack.gateway({"controllers": [openai_controller(openai_up, models=["stream-model"]),
                                   openai_controller(azure_up, models=["azure-model"]),
                                   openai_controller(odd_up, models=["odd-model"])]})
    with client(stack).chat.completions.with_streaming_response.create(
            model="stream-model", messages=MESSAGES, stream=True) as response:
        assert response.headers["x-upstream-request-id"] == "req_5f0e7a"
        assert response.headers["x-request-id"] != "req_5f0e7a"  # ours stays ours
        assert b"[DONE]" in response.read()
    raw = client(stack).chat.completions.with_raw_response.create(model="azure-model", messages=MESSAGES)
    assert raw.headers["x-upstream-request-id"] == "0b9d3c55-6f0e-4c9a-9a1e-2f6d1c0a7b3e"
    raw = client(stack).chat.completions.with_raw_response.create(model="odd-model", messages=MESSAGES)
    assert "x-upstream-request-id" not in raw.headers  # not a safe token to pass on or log
