"""What every endpoint shares with chat: limits, failover, keys, errors, and telling a broken answer."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import orjson
import pytest

from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .sdk_checks import multipart

EMBED = {"model": "text-embedding-3-small", "input": "hello"}
RESPOND = {"model": "gpt-4o-mini", "input": "hello", "store": False}


def client(stack: Stack, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0, timeout=30, **options)


@pytest.mark.parametrize("path,body", [("/v1/embeddings", EMBED), ("/v1/responses", RESPOND)])
def test_buckets_hold_for_other_endpoints_and_no_upstream_ever_answers_429(stack: Stack, path: str,
                                                                            body: dict[str, Any]) -> None:
    limits = {"fast": 240.0, "slow": 120.0}  # 4 and 2 a second
    pool = {name: stack.fake(name) for name in limits}
    for name, fake in pool.items():
        fake.limit(limits[name], burst=2)
    stack.gateway({"controllers": [openai_controller(pool[n], rpm=limits[n], burst=1) for n in limits]},
                  "--max-queue-wait", "0.5", "--max-queue-size", "8")
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + 3

    def worker() -> None:
        while time.monotonic() < stop_at:
            status = stack.request("POST", path, body)[0]
            with lock:
                statuses[status] += 1
            if status == 429:
                time.sleep(0.1)

    with ThreadPoolExecutor(12) as executor:
        for _ in range(12):
            executor.submit(worker)
    assert sum(fake.rejected for fake in pool.values()) == 0, "an upstream had to answer 429"
    assert statuses[429] > 0 and statuses[200] > 5 and set(statuses) <= {200, 429}
    assert statuses[200] <= 3 * 6 + 4  # ~3 s at 6 a second, plus the bursts


ENDPOINT_CALLS = [
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi"}),
    ("/v1/embeddings", EMBED),
    ("/v1/moderations", {"input": "hello", "model": "omni-moderation-latest"}),
    ("/v1/responses", RESPOND),
    ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "a cat"}),
    ("/v1/audio/speech", {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "hello"}),
]


@pytest.mark.parametrize("path,body", ENDPOINT_CALLS, ids=[c[0] for c in ENDPOINT_CALLS])
def test_failover_before_the_first_byte_on_every_endpoint(stack: Stack, path: str, body: dict[str, Any]) -> None:
    broken, good = stack.fake("broken"), stack.fake("good")
    broken.default = Cue(mode="status", status=502)
    stack.gateway({"controllers": [openai_controller(broken, weight=100), openai_controller(good)]})
    status, headers, answer = stack.request("POST", path, body)
    assert status == 200, answer
    assert headers["x-chatgpt-apiserver-controller"] == "good" and broken.requests_to(path.removeprefix("/v1"))


def test_multipart_failover_and_routing(stack: Stack) -> None:
    broken, good, chat_only = stack.fake("broken"), stack.fake("good"), stack.fake("chat")
    broken.default = Cue(mode="status", status=500)
    stack.gateway({"controllers": [openai_controller(chat_only, models=["gpt-4o"], weight=100),
                                   openai_controller(broken, weight=50), openai_controller(good)]})
    form, content_type = multipart({"model": "whisper-1"}, {"file": ("a.wav", b"RIFF")})
    status, headers, _ = stack.request("POST", "/v1/audio/transcriptions", form, {"Content-Type": content_type})
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "good"
    assert not chat_only.requests


def test_a_form_field_sent_twice_cannot_slip_past_a_model_allow_list(stack: Stack) -> None:
    upstream = stack.fake("up")
    stack.gateway({"clients": [{"name": "asr", "key": "asr-key", "models": ["whisper-1"]}],
                   "controllers": [openai_controller(upstream)]})
    form, content_type = multipart({"model": "whisper-1"}, {"file": ("a.wav", b"RIFF")})
    boundary = content_type.split("boundary=")[1]
    second = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-transcribe\r\n'.encode()
    headers = {"Content-Type": content_type, "Authorization": "Bearer asr-key"}
    status, _, answer = stack.request("POST", "/v1/audio/transcriptions", second + form, headers)
    error = orjson.loads(answer)["error"]
    assert status == 400 and error["param"] == "model" and "send it once" in error["message"], answer
    assert not upstream.requests
    status, _, answer = stack.request("POST", "/v1/audio/transcriptions", form, headers)
    assert status == 200 and upstream.requests, answer


ROUTES = [
    ("POST", "/v1/completions"), ("POST", "/v1/embeddings"), ("POST", "/v1/moderations"), ("POST", "/v1/responses"),
    ("GET", "/v1/responses/resp_x"), ("DELETE", "/v1/responses/resp_x"), ("POST", "/v1/responses/resp_x/cancel"),
    ("GET", "/v1/responses/resp_x/input_items"), ("POST", "/v1/responses/input_tokens"),
    ("POST", "/v1/responses/compact"), ("POST", "/v1/conversations"), ("GET", "/v1/conversations/conv_x"),
    ("POST", "/v1/conversations/conv_x"), ("DELETE", "/v1/conversations/conv_x"),
    ("GET", "/v1/conversations/conv_x/items"), ("POST", "/v1/conversations/conv_x/items"),
    ("GET", "/v1/conversations/conv_x/items/msg_x"), ("DELETE", "/v1/conversations/conv_x/items/msg_x"),
    ("POST", "/v1/audio/transcriptions"), ("POST", "/v1/audio/translations"), ("POST", "/v1/audio/speech"),
    ("POST", "/v1/images/generations"), ("POST", "/v1/images/edits"), ("GET", "/v1/models/gpt-4o"),
]


@pytest.mark.parametrize("method,path", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_needs_a_client_key_and_answers_in_openais_shape(stack: Stack, method: str, path: str) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)], "client_keys": ["team-key-123"]})
    status, headers, body = stack.request(method, path, b"{}" if method == "POST" else None, headers={})
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
    keyed = {"Authorization": "Bearer team-key-123", "Content-Type": "application/json"}
    if method == "POST" and "conversations" not in path and "cancel" not in path:
        status, _, body = stack.request(method, path, b"{not json", headers=keyed)
        error = orjson.loads(body)["error"]
        assert status == (415 if "/audio/trans" in path else 400)  # those take multipart forms only
        assert set(error) == {"message", "type", "param", "code"}
    assert not fake.requests


def test_a_field_mistake_names_the_field(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    with pytest.raises(openai.BadRequestError) as caught:
        client(stack).embeddings.create(model="text-embedding-3-small", input="x", dimensions="many")  # type: ignore[arg-type]
    assert caught.value.param == "dimensions" and not fake.requests


def test_a_huge_max_tokens_times_n_is_reserved_not_a_500(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    sdk = client(stack)
    assert sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=1e308, n=2).choices  # type: ignore[arg-type]
    assert sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=1e308,  # type: ignore[arg-type]
                                  n=2).choices


def test_a_broken_typed_stream_ends_with_an_error_event_the_sdk_raises(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.default = Cue(mode="cut", events=6, after=3)
    stack.gateway({"controllers": [openai_controller(fake)]})
    seen = []
    with pytest.raises(openai.APIError):
        for event in client(stack).responses.create(model="gpt-4o-mini", input="hi", stream=True):
            seen.append(event.type)
    assert "response.created" in seen and "response.completed" not in seen
    _, _, raw = stack.request("POST", "/v1/responses", {**RESPOND, "stream": True})
    assert raw.rstrip().split(b"\n\n")[-1].startswith(b"event: error\ndata: ")


def test_a_typed_stream_without_its_final_event_is_an_error(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.default = Cue(mode="no_done")
    stack.gateway({"controllers": [openai_controller(fake)]})
    _, _, raw = stack.request("POST", "/v1/responses", {**RESPOND, "stream": True})
    last = raw.rstrip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error") and b"final event" in last


@pytest.mark.parametrize("cue,says", [(Cue(mode="no_done"), b"final event"),
                                      (Cue(mode="malformed_event", events=3, after=1), b"not valid JSON")])
def test_speech_asked_as_events_is_a_typed_stream_that_ends_in_an_error_when_it_breaks(stack: Stack, cue: Cue,
                                                                                        says: bytes) -> None:
    fake = stack.fake("up")
    fake.default = cue
    stack.gateway({"controllers": [openai_controller(fake)]})
    speech = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "hello", "stream_format": "sse"}
    status, headers, raw = stack.request("POST", "/v1/audio/speech", speech)
    last = raw.rstrip().split(b"\n\n")[-1]
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert last.startswith(b"event: error") and says in last, raw[-300:]
    fake.default = Cue(mode="stream", events=2)
    _, _, raw = stack.request("POST", "/v1/audio/speech", speech)
    assert b'"type":"speech.audio.done"' in raw.rstrip().split(b"\n\n")[-1].replace(b" ", b"")


def test_a_broken_binary_answer_is_cut_off_without_its_end(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.default = Cue(mode="cut", events=4, after=2)
    stack.gateway({"controllers": [openai_controller(fake)]})
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    connection.request("POST", "/v1/audio/speech", body=orjson.dumps(
        {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "hello"}), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    connection.close()


def test_stream_usage_false_never_asks_for_usage(stack: Stack) -> None:
    fake = stack.fake("strict")
    stack.gateway({"controllers": [openai_controller(fake, stream_usage=False, tpm=100_000)]})
    list(client(stack).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                               stream=True))
    assert b"stream_options" not in fake.chat_requests[0].body


def test_an_upstream_refusing_stream_options_is_asked_again_without_it(stack: Stack) -> None:
    fake = stack.fake("old-azure")
    refusal = orjson.dumps({"error": {"message": "Unrecognized request argument supplied: stream_options",
                                      "type": "invalid_request_error", "param": None, "code": None}})
    fake.cue(Cue(mode="status", status=400, body=refusal))
    fake.default = Cue(mode="stream", events=3)
    stack.gateway({"controllers": [openai_controller(fake, tpm=100_000)]})
    sdk = client(stack)
    for _ in range(2):
        chunks = list(sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True))
        assert chunks
    first, again, later = fake.chat_requests
    assert b"stream_options" in first.body and b"stream_options" not in again.body
    assert b"stream_options" not in later.body  # remembered for the controller


MALFORMED_FORMS = [
    b"--zz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n",  # no final boundary
    b"--zz\r\nContent-Disposition: form-data; name=\"model\"\r\nwhisper-1--zz--\r\n",  # part headers never end
    b"--zz\r\nContent-Disposition: form-data\r\n\r\nwhisper-1\r\n--zz--\r\n",  # a part without a name
    b"--zz\r\nContent-Type: text/plain\r\n\r\nwhisper-1\r\n--zz--\r\n",  # no Content-Disposition
    b"--zz\r\nContent-Disposition: form-data; name=\"\xff\xfe\"\r\n\r\nx\r\n--zz--\r\n",  # not UTF-8
    b'{"model": "whisper-1"}',  # JSON sent as a form
]


@pytest.mark.parametrize("body", MALFORMED_FORMS)
def test_a_malformed_form_is_a_400_never_a_500(stack: Stack, body: bytes) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    for path in ("/v1/audio/transcriptions", "/v1/images/edits"):
        status, _, answer = stack.request("POST", path, body,
                                          headers={"Content-Type": "multipart/form-data; boundary=zz"})
        error = orjson.loads(answer)["error"]
        assert status == 400 and error["code"] == "invalid_multipart", error
    assert not fake.requests
