"""Every cue mode, the rate limit, the key check and the recording, on the fake's non-chat endpoints."""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from collections.abc import Callable, Iterator
from json import JSONDecodeError

import httpx2
import openai
import orjson
import pytest
from openai.types.responses import ResponseErrorEvent

from .fake_media import speech_audio
from .fake_upstream import Cue, FakeUpstream
from .harness import Stack
from .sdk_checks import Sdk, raw, strict

MODEL = "gpt-4.1-mini"
EMBED = {"model": "text-embedding-3-small", "input": "hello", "encoding_format": "float"}
STREAM_HEAD = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` (state the fake changes on its own loop) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition(), "condition not met in time"


@contextlib.contextmanager
def open_request(fake: FakeUpstream, path: str, body: dict[str, object], timeout: float = 5.0
                 ) -> Iterator[http.client.HTTPResponse]:
    """A POST whose answer the test reads as it likes."""
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=timeout)
    try:
        connection.request("POST", path, body=orjson.dumps(body), headers={"Content-Type": "application/json"})
        yield connection.getresponse()
    finally:
        connection.close()


def test_status_delay_and_headers_cues(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.cue(Cue(mode="status", status=503), Cue(delay=0.3, headers={"x-fake": "yes"}))
    client = sdk(fake)
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(**EMBED)
    assert caught.value.status_code == 503 and isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == "fake error 503"
    started = time.monotonic()
    status, headers, body = raw(fake, "POST", "/v1/embeddings", EMBED)
    assert time.monotonic() - started >= 0.3 and status == 200 and headers["x-fake"] == "yes"
    assert orjson.loads(body)["object"] == "list" and len(fake.requests_to("/embeddings")) == 2


def test_a_model_cue_applies_on_every_endpoint_that_names_the_model(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.model_cues["broken"] = Cue(mode="status", status=500)
    client = sdk(fake)
    for _attempt in range(2):
        with pytest.raises(openai.InternalServerError):
            client.moderations.create(model="broken", input="x")
        with pytest.raises(openai.InternalServerError):
            client.audio.transcriptions.create(model="broken", file=("a.wav", b"\x00" * 100))
    assert client.moderations.create(model="omni-moderation-latest", input="x").results


def test_stall_holds_until_the_client_gives_up(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.cue(Cue(mode="stall"))
    with pytest.raises(openai.APITimeoutError):
        sdk(fake, timeout=0.5).conversations.create()
    wait_for(lambda: fake.connections_closed_early == 1)
    assert fake.conversation_ids == []  # a stalled request stores nothing


def test_malformed_and_slow_json_bodies(stack: Stack) -> None:
    fake = stack.fake()
    fake.cue(Cue(mode="malformed"), Cue(mode="slow_json", interval=0.3))
    status, headers, body = raw(fake, "POST", "/v1/embeddings", EMBED)
    assert status == 200 and headers["content-type"] == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    with open_request(fake, "/v1/embeddings", EMBED) as response:
        started = time.monotonic()
        first = response.read1(65536)
        rest = response.read()
    assert time.monotonic() - started >= 0.2 and orjson.loads(first + rest)["object"] == "list"


def test_cut_and_stall_after_a_json_body_sends_half_of_it(stack: Stack) -> None:
    fake = stack.fake()
    fake.cue(Cue(mode="cut"), Cue(mode="stall_after"))
    with open_request(fake, "/v1/moderations", {"input": "x"}) as response, pytest.raises(
            http.client.IncompleteRead) as caught:
        response.read()
    assert 0 < len(caught.value.partial) < int(response.headers["Content-Length"])
    with open_request(fake, "/v1/moderations", {"input": "x"}, timeout=0.5) as response:
        assert response.status == 200
        with pytest.raises((TimeoutError, socket.timeout)):
            response.read()


def test_cut_and_stall_after_mid_stream(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.cue(Cue(mode="cut", after=4), Cue(mode="stall_after", after=1, events=3))
    seen = []
    with pytest.raises(openai.APIConnectionError):
        for event in sdk(fake).responses.create(model=MODEL, input="x", stream=True):
            seen.append(event.type)
    assert seen == STREAM_HEAD
    pieces = []
    with pytest.raises(httpx2.ReadTimeout), sdk(fake, timeout=0.5).audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input="hi") as response:
        for piece in response.iter_bytes():
            pieces.append(piece)
    assert pieces == [speech_audio("mp3", 3)[0]]


def test_malformed_event_breaks_one_event_and_the_stream_goes_on(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.default = Cue(mode="malformed_event", after=1, events=2)
    request = {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "stream": True}
    _status, _headers, body = raw(fake, "POST", "/v1/completions", request)
    events = body.split(b"\n\n")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(events[1][len(b"data: "):])
    assert orjson.loads(events[2][len(b"data: "):])["choices"][0]["finish_reason"] == "stop"
    assert body.endswith(b"data: [DONE]\n\n")
    with pytest.raises(JSONDecodeError):
        list(sdk(fake).completions.create(model="gpt-3.5-turbo-instruct", prompt="x", stream=True))


def test_error_event_in_typed_and_data_streams(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.default = Cue(mode="error_event", after=4)
    client = sdk(fake)
    events = list(client.responses.create(model=MODEL, input="x", stream=True))
    assert [event.type for event in events] == [*STREAM_HEAD, "error"]
    error = strict(ResponseErrorEvent, events[-1].to_dict())
    assert (error.sequence_number, error.code, error.message) == (4, "server_error", "upstream exploded")
    _status, _headers, body = raw(fake, "POST", "/v1/responses", {"model": MODEL, "input": "x", "stream": True})
    assert body.endswith(b'\n\nevent: error\ndata: {"type":"error","code":"server_error","message":"upstream '
                         b'exploded","param":null,"sequence_number":4}\n\n')
    fake.default = Cue(mode="error_event", after=1)
    for start in (lambda: client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", stream=True),
                  lambda: client.images.generate(model="gpt-image-1", prompt="x", stream=True, partial_images=2),
                  lambda: client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", b"\x00"),
                                                             stream=True)):
        with pytest.raises(openai.APIError, match="upstream exploded"):
            list(start())


def test_no_done_leaves_out_the_terminator(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.default = Cue(mode="no_done")
    client = sdk(fake)
    events = [event.type for event in client.responses.create(model=MODEL, input="x", stream=True)]
    assert events[-1] == "response.output_item.done" and "response.completed" not in events
    _status, _headers, body = raw(fake, "POST", "/v1/completions",
                                  {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "stream": True})
    assert body.endswith(b"}\n\n") and b"[DONE]" not in body
    transcript = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", b"\x00"), stream=True)
    assert {event.type for event in transcript} == {"transcript.text.delta"}


def test_chunked_bytes_split_every_write(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.default = Cue(chunked_bytes=7, events=2)
    client = sdk(fake)
    events = list(client.responses.create(model=MODEL, input="x", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "hello0 hello1 "
    assert client.moderations.create(input="violence").results[0].flagged
    with open_request(fake, "/v1/embeddings", EMBED) as response:
        assert response.headers["Transfer-Encoding"] == "chunked" and orjson.loads(response.read())["data"]


def test_the_rate_limit_and_keys_apply_to_every_endpoint(stack: Stack, sdk: Sdk) -> None:
    fake = stack.fake()
    fake.valid_keys = {"sk-good"}
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(fake, api_key="sk-bad").images.generate(model="gpt-image-1", prompt="x")
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "invalid_api_key"
    good = sdk(fake, api_key="sk-good")
    fake.limit(60, burst=1)
    assert good.conversations.create().id.startswith("conv_")
    with pytest.raises(openai.RateLimitError) as limited:
        good.embeddings.create(**EMBED)
    assert int(limited.value.response.headers["retry-after"]) >= 1 and fake.rejected == 1


def test_requests_are_recorded_and_unknown_routes_answer_openais_errors(stack: Stack) -> None:
    fake = stack.fake()
    body = b'{ "input" :  "x",\n "model": "omni-moderation-latest" }'
    status, _headers, _answer = raw(fake, "POST", "/v1/moderations?trace=1", body,
                                    {"Content-Type": "application/json", "Authorization": "Bearer sk-1"})
    seen = fake.requests[-1]
    assert status == 200 and seen.body == body and seen.path == "/v1/moderations?trace=1"
    assert seen.headers["Authorization"] == "Bearer sk-1" and fake.requests_to("/moderations") == [seen]
    status, _headers, answer = raw(fake, "GET", "/v1/embeddings")
    assert status == 405 and orjson.loads(answer)["error"]["message"] == "Invalid method for URL (GET /v1/embeddings)."
    status, _headers, answer = raw(fake, "POST", "/v1/nothing/here", {})
    assert status == 404 and orjson.loads(answer)["error"]["message"] == "Invalid URL (POST /v1/nothing/here)"
    status, _headers, answer = raw(fake, "POST", "/v1/embeddings", b"{not json")
    assert status == 400 and orjson.loads(answer)["error"]["type"] == "invalid_request_error"
    assert len(fake.requests) == 4
