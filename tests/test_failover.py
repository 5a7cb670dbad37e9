"""Failover before the first byte, upstream errors, and failures in the middle of a stream."""

from __future__ import annotations

import socket
from typing import Any

import openai
import orjson
import pytest

from .fake_upstream import Cue
from .harness import Stack, openai_controller, raw_controller
from .raw_upstream import Script, answer

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True}


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def events_of(body: bytes) -> list[bytes]:
    return [event for event in body.split(b"\n\n") if event]


@pytest.mark.parametrize("cue", [
    Cue(mode="status", status=500), Cue(mode="status", status=503), Cue(mode="status", status=429),
    Cue(mode="status", status=401), Cue(mode="malformed"),
])
def test_failover_before_the_first_byte(stack: Stack, cue: Cue) -> None:
    bad, good = stack.fake("bad"), stack.fake("good")
    bad.default = cue
    stack.gateway({"controllers": [openai_controller(bad, weight=5), openai_controller(good)]})
    status, headers, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200, body
    assert headers["x-chatgpt-apiserver-controller"] == "good"
    assert len(bad.chat_requests) == 1 and len(good.chat_requests) == 1


def test_failover_when_the_upstream_refuses_connections(stack: Stack) -> None:
    good = stack.fake("good")
    dead = {"type": "openai", "name": "dead", "weight": 10,
            "config": {"api_key": "sk-dead-0123456789abcdef", "base_url": f"http://127.0.0.1:{closed_port()}/v1"}}
    stack.gateway({"controllers": [dead, openai_controller(good)]})
    status, headers, _ = stack.request("POST", "/v1/chat/completions", STREAM)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "good"


def test_streaming_failover_when_the_first_upstream_fails_before_any_event(stack: Stack) -> None:
    bad, good = stack.fake("bad"), stack.fake("good")
    bad.default = Cue(mode="status", status=502)
    good.default = Cue(mode="stream", events=2)
    stack.gateway({"controllers": [openai_controller(bad, weight=5), openai_controller(good)]})
    status, _, body = stack.request("POST", "/v1/chat/completions", STREAM)
    assert status == 200 and events_of(body)[-1] == b"data: [DONE]"


def test_every_controller_failing_gives_500_with_the_reasons(stack: Stack) -> None:
    a, b = stack.fake("a"), stack.fake("b")
    a.default = Cue(mode="status", status=500)
    b.default = Cue(mode="status", status=503)
    stack.gateway({"controllers": [openai_controller(a), openai_controller(b)]})
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 500
    error = orjson.loads(body)["error"]
    assert error["type"] == "server_error"
    assert "a: upstream answered 500" in error["message"] and "b: upstream answered 503" in error["message"]


def test_every_controller_rate_limited_gives_429_with_retry_after(stack: Stack) -> None:
    a, b = stack.fake("a"), stack.fake("b")
    a.default = Cue(mode="status", status=429, headers={"Retry-After": "7"})
    b.default = Cue(mode="status", status=429, headers={"Retry-After": "3"})
    stack.gateway({"controllers": [openai_controller(a), openai_controller(b)]})
    with pytest.raises(openai.RateLimitError) as caught:
        openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0).chat.completions.create(**BODY)
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.status_code == 429
    assert len(a.chat_requests) + len(b.chat_requests) <= 3  # max_attempts


def test_attempts_are_bounded(stack: Stack) -> None:
    fakes = [stack.fake(f"f{i}") for i in range(5)]
    for fake in fakes:
        fake.default = Cue(mode="status", status=500)
    stack.gateway({"controllers": [openai_controller(f) for f in fakes]}, "--max-attempts", "2")
    status, _, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 500
    assert sum(len(f.chat_requests) for f in fakes) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_timeouts_everywhere_give_504(stack: Stack, stream: bool) -> None:
    a = stack.fake("a")
    a.default = Cue(mode="stall")
    # A stream's headers are bounded by first_byte_timeout; a non-streamed answer by request_timeout.
    stack.gateway({"controllers": [openai_controller(a)]},
                  "--first-byte-timeout" if stream else "--request-timeout", "0.3")
    status, headers, body = stack.request("POST", "/v1/chat/completions", {**BODY, "stream": stream})
    assert status == 504 and headers["x-should-retry"] == "false"
    assert orjson.loads(body)["error"]["type"] == "timeout_error"


def test_malformed_json_everywhere_gives_502(stack: Stack) -> None:
    a = stack.fake("a")
    a.default = Cue(mode="malformed")
    stack.gateway({"controllers": [openai_controller(a)]})
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 502 and "invalid response" in orjson.loads(body)["error"]["message"]


@pytest.mark.parametrize("status_code", [400, 404, 413, 422])
def test_request_errors_from_the_upstream_are_relayed_scrubbed(stack: Stack, status_code: int) -> None:
    a, b = stack.fake("a"), stack.fake("b")
    leaked = b'{"error": {"message": "bad key sk-proj-abcdefghijklmnop1234 and sk-test-a-0123456789abcdef", ' \
             b'"type": "invalid_request_error", "param": "messages", "code": null}}'
    a.default = b.default = Cue(mode="status", status=status_code, body=leaked)
    stack.gateway({"controllers": [openai_controller(a), openai_controller(b)]})
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == status_code
    error = orjson.loads(body)["error"]
    assert error["param"] == "messages"
    assert b"abcdefghijklmnop1234" not in body and b"0123456789abcdef" not in body
    assert len(a.chat_requests) + len(b.chat_requests) == 1  # not retried


def test_no_retry_after_the_first_byte(stack: Stack) -> None:
    a, b = stack.fake("a"), stack.fake("b")
    a.default = b.default = Cue(mode="cut", events=5, after=2)
    stack.gateway({"controllers": [openai_controller(a), openai_controller(b)]})
    status, _, body = stack.request("POST", "/v1/chat/completions", STREAM)
    assert status == 200
    events = events_of(body)
    assert len(events) == 1 + 2 + 1  # role, two deltas, then the error event
    error = orjson.loads(events[-1][len(b"data: "):])["error"]
    assert error["type"] == "server_error" and "stream" in error["message"]
    assert b"data: [DONE]" not in body
    assert len(a.chat_requests) + len(b.chat_requests) == 1


@pytest.mark.parametrize("cue,expect", [
    (Cue(mode="no_done", events=2), "without [DONE]"),
    (Cue(mode="malformed_event", events=3, after=1), "not valid JSON"),
    (Cue(mode="stall_after", events=3, after=1), "timed out"),
])
def test_mid_stream_failures_end_with_one_error_event(stack: Stack, cue: Cue, expect: str) -> None:
    a = stack.fake("a")
    a.default = cue
    stack.gateway({"controllers": [openai_controller(a)]}, "--stream-idle-timeout", "0.5")
    status, _, body = stack.request("POST", "/v1/chat/completions", STREAM)
    assert status == 200
    last = events_of(body)[-1]
    assert last.startswith(b"data: {\"error\"")
    assert expect in orjson.loads(last[6:])["error"]["message"]
    assert b"data: [DONE]" not in body


def test_upstream_error_event_is_relayed_and_ends_the_stream(stack: Stack) -> None:
    a = stack.fake("a")
    a.default = Cue(mode="error_event", events=3, after=1)
    stack.gateway({"controllers": [openai_controller(a)]})
    with pytest.raises(openai.APIError, match="upstream exploded"):
        client = openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0)
        for _ in client.chat.completions.create(**STREAM):
            pass


@pytest.mark.parametrize("mode", ["cut", "malformed"])
@pytest.mark.parametrize("path,body", [("/v1/conversations", {}),
                                       ("/v1/responses", {"model": "gpt-4o", "input": "hi"})])
def test_a_create_cut_after_its_answer_began_is_not_made_again_elsewhere(stack: Stack, path: str,
                                                                        body: dict[str, Any], mode: str) -> None:
    a, b = stack.fake("a"), stack.fake("b")
    a.default = Cue(mode=mode, after=1)
    stack.gateway({"controllers": [openai_controller(a, weight=100), openai_controller(b, weight=1)]})
    status, headers, raw = stack.request("POST", path, body)
    assert status >= 500 and headers["x-should-retry"] == "false", raw
    assert a.requests_to(path.removeprefix("/v1")) and not b.requests  # one was made: no second one
    embed = {"model": "text-embedding-3-small", "input": "hi"}  # a call that makes nothing stored
    status, headers, _ = stack.request("POST", "/v1/embeddings", embed)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "b"  # still fails over


def test_a_streamed_create_that_breaks_before_its_first_event_goes_to_another_controller(stack: Stack) -> None:
    a, b = stack.fake("a"), stack.fake("b")
    a.default = Cue(mode="cut", after=0)  # the head, then nothing: no response.created yet
    stack.gateway({"controllers": [openai_controller(a, weight=100), openai_controller(b, weight=1)]})
    client = openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0)
    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    assert events[-1].type == "response.completed" and a.requests and b.requests


@pytest.mark.parametrize("stream", [False, True])
def test_a_web_page_answered_200_is_a_failure_not_a_success(stack: Stack, stream: bool) -> None:
    portal, good = stack.raw(), stack.fake("good")
    page = answer(b"<html>maintenance</html>", "Content-Type: Text/HTML; charset=utf-8")
    portal.default = Script((page,))
    stack.gateway({"controllers": [raw_controller(portal, name="portal", weight=100), openai_controller(good)]})
    status, headers, body = stack.request("POST", "/v1/chat/completions", {**BODY, "stream": stream})
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "good" and b"maintenance" not in body
    assert stack.running is not None
    stack.loop.run(stack.running.stop(grace=1.0))
    stack.gateway({"controllers": [raw_controller(portal, name="portal")]})  # nothing else to ask
    status, _, body = stack.request("POST", "/v1/chat/completions", {**BODY, "stream": stream})
    assert status == 502 and b"web page" in body, body


def test_mid_stream_failure_is_an_exception_in_the_openai_client(stack: Stack) -> None:
    a = stack.fake("a")
    a.default = Cue(mode="cut", events=4, after=2)
    stack.gateway({"controllers": [openai_controller(a)]})
    client = openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0)
    received = []
    with pytest.raises(openai.APIError):
        for event in client.chat.completions.create(**STREAM):
            received.append(event)
    assert len(received) == 3


def test_unknown_model_is_404_model_not_found(stack: Stack) -> None:
    a = stack.fake("a")
    stack.gateway({"controllers": [openai_controller(a, models=["gpt-4o"])]})
    with pytest.raises(openai.NotFoundError) as caught:
        openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0).chat.completions.create(
            model="gpt-3", messages=BODY["messages"])  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"
    assert not a.chat_requests
