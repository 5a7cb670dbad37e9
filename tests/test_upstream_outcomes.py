"""What the client is told after the gateway's own attempts, and what the controllers learn from them."""

from __future__ import annotations

import http.client
import time

import openai
import orjson
import pytest

from .fake_upstream import Cue
from .harness import Stack, openai_controller

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True}


def test_a_slow_non_streamed_answer_is_not_cut_by_the_first_byte_timeout(stack: Stack) -> None:
    slow, other = stack.fake("slow"), stack.fake("other")
    slow.default = Cue(delay=1.0)  # the headers come with the complete answer, a second later
    stack.gateway({"controllers": [openai_controller(slow, weight=100), openai_controller(other)]},
                  "--first-byte-timeout", "0.3", "--request-timeout", "10")
    status, headers, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "slow"
    assert len(slow.chat_requests) == 1 and not other.chat_requests  # sent once


def test_a_stream_still_fails_over_when_its_headers_are_late(stack: Stack) -> None:
    late, other = stack.fake("late"), stack.fake("other")
    late.default = Cue(mode="stream", delay=2.0)
    other.default = Cue(mode="stream")
    stack.gateway({"controllers": [openai_controller(late, weight=100), openai_controller(other)]},
                  "--first-byte-timeout", "0.3", "--retry-on-timeout")
    status, headers, _ = stack.request("POST", "/v1/chat/completions", STREAM)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "other"


@pytest.mark.parametrize("retry_on_timeout", [False, True])
def test_a_timed_out_request_is_sent_again_only_when_allowed(stack: Stack, retry_on_timeout: bool) -> None:
    stalled, other = stack.fake("stalled"), stack.fake("other")
    stalled.default = Cue(mode="stall")
    stack.gateway({"controllers": [openai_controller(stalled, weight=100), openai_controller(other)]},
                  "--request-timeout", "0.5", *(["--retry-on-timeout"] if retry_on_timeout else []))
    client = openai.OpenAI(base_url=stack.base_url, api_key="k", timeout=30)  # the SDK's default retries
    if retry_on_timeout:
        assert client.chat.completions.create(**BODY).choices[0].message.content == "hello"  # type: ignore[call-overload]
        assert len(other.chat_requests) == 1
        return
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**BODY)  # type: ignore[call-overload]
    assert caught.value.status_code == 504
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(stalled.chat_requests) == 1 and not other.chat_requests  # neither we nor the SDK resent it


def test_the_sdk_is_told_not_to_retry_what_the_gateway_already_tried(stack: Stack) -> None:
    fakes = [stack.fake(name) for name in ("a", "b")]
    for fake in fakes:
        fake.default = Cue(mode="status", status=503)
    stack.gateway({"controllers": [openai_controller(fake) for fake in fakes]}, "--breaker-failures", "1000")
    client = openai.OpenAI(base_url=stack.base_url, api_key="k", timeout=30)  # max_retries=2 by default
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(**BODY)  # type: ignore[call-overload]
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert sum(len(fake.chat_requests) for fake in fakes) == 2  # one attempt each, and no SDK retry


def test_a_gateway_that_did_not_try_every_candidate_lets_the_sdk_retry(stack: Stack) -> None:
    fakes = [stack.fake(name) for name in ("a", "b")]
    for fake in fakes:
        fake.default = Cue(mode="status", status=503)
    stack.gateway({"controllers": [openai_controller(fake) for fake in fakes]}, "--max-attempts", "1",
                  "--breaker-failures", "1000")
    status, headers, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 500 and "x-should-retry" not in headers


def test_retry_after_says_when_a_cooldown_ends(stack: Stack) -> None:
    limited, broken = stack.fake("limited"), stack.fake("broken")
    limited.default = Cue(mode="status", status=429, headers={"Retry-After": "20"})
    broken.default = Cue(mode="status", status=500)
    stack.gateway({"controllers": [openai_controller(limited, weight=100), openai_controller(broken)]},
                  "--breaker-failures", "1000")
    status, headers, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 500 and headers["x-should-retry"] == "false"
    assert 18 <= int(headers["retry-after"]) <= 20


def test_mid_stream_failures_count_against_the_controller(stack: Stack) -> None:
    fake = stack.fake("crashy")
    fake.default = Cue(mode="cut", events=5, after=2)
    stack.gateway({"controllers": [openai_controller(fake)]}, "--breaker-failures", "1000")
    for _ in range(20):
        status, _, body = stack.request("POST", "/v1/chat/completions", STREAM)
        assert status == 200 and b'"code":"upstream_stream_error"' in body
    _, _, raw = stack.request("GET", "/admin/controllers")
    view = orjson.loads(raw)["controllers"][0]
    assert view["counts"]["failures"] == 20 and view["counts"]["successes"] == 0
    assert view["consecutive_failures"] == 20


def test_a_failed_model_discovery_is_cached_briefly(stack: Stack) -> None:
    fake = stack.fake("down")
    fake.models_status = 503
    stack.gateway({"controllers": [openai_controller(fake)]})
    for _ in range(10):
        status, _, body = stack.request("GET", "/v1/models")
        assert status == 200 and orjson.loads(body)["data"] == []
    assert len(fake.model_requests) == 1  # the start-up discovery failed; nobody asked again within 30 s
    fake.models_status = 200
    time.sleep(0.1)
    assert len(fake.model_requests) == 1


def test_a_huge_max_tokens_cannot_put_a_controller_out_of_service(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.default = Cue(mode="stream", events=50, interval=0.05)
    stack.gateway({"controllers": [openai_controller(fake, tpm=100_000)]}, "--max-queue-wait", "5")
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    connection.request("POST", "/v1/chat/completions", body=orjson.dumps({**STREAM, "max_tokens": 10**15}),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    response.read(64)  # the stream began; the client hangs up, its usage never known
    connection.close()
    fake.default = Cue()
    started = time.monotonic()
    status, _, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200 and time.monotonic() - started < 3  # the reservation was at most a full bucket
