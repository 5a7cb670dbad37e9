"""Every cue mode, the rate limit, the key check and the recording, on the fake's non-chat endpoints."""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from collections.abc import Iterator

import openai
import orjson
import pytest

from .fake_upstream import Cue, FakeUpstream
from .harness import Stack
from .sdk_checks import Sdk, raw

EMBED = {"model": "text-embedding-3-small", "input": "hello", "encoding_format": "float"}


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
        client.embeddings.create(**EMBED)  # type: ignore[arg-type]
    assert caught.value.status_code == 503 and isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == "fake error 503"
    started = time.monotonic()
    status, headers, body = raw(fake, "POST", "/v1/embeddings", EMBED)
    assert time.monotonic() - started >= 0.3 and status == 200 and headers["x-fake"] == "yes"
    assert orjson.loads(body)["object"] == "list" and len(fake.requests_to("/embeddings")) == 2


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
