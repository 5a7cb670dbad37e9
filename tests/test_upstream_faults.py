"""Upstreams that misbehave at the byte level, end to end through the gateway, with the raw-socket fake."""

from __future__ import annotations

import time

import orjson

from .fake_upstream import Cue
from .fake_upstream import chunk as sse_event
from .harness import Stack, openai_controller, raw_controller
from .raw_upstream import OK, SSE_HEAD, Script, answer, chunk, gzip_bomb

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True}
ROLE = sse_event("fake-model", {"role": "assistant", "content": ""})
ENDLESS = (b"data: {\"filler\": \"" + b"x" * 8000,) + (b"y" * 8192,) * 40  # one event that never ends


def admin_view(stack: Stack) -> dict[str, object]:
    status, _, body = stack.request("GET", "/admin/controllers")
    assert status == 200
    controllers: list[dict[str, object]] = orjson.loads(body)["controllers"]
    return controllers[0]


def test_a_server_closing_reused_connections_as_requests_arrive_costs_no_errors(stack: Stack) -> None:
    # uvicorn (vLLM) closes idle keep-alive connections after 5 s; a request can meet the close.
    raw = stack.raw()
    raw.cue(OK, *[Script((), close=True), OK] * 5)  # every reused connection dies as the next request comes
    stack.gateway({"controllers": [raw_controller(raw)]})
    statuses = [stack.request("POST", "/v1/chat/completions", BODY)[0] for _ in range(6)]
    assert statuses == [200] * 6
    view = admin_view(stack)
    assert view["consecutive_failures"] == 0 and view["counts"]["failures"] == 0  # type: ignore[index]
    assert len(raw.requests) == 11  # five of them sent twice, each second time on a fresh connection
    assert len({r.connection for r in raw.requests}) == 6


def test_a_gzip_bomb_is_a_502_without_inflating_it(stack: Stack) -> None:
    raw = stack.raw()
    raw.cue(Script((answer(gzip_bomb(256 * 1024 * 1024), "Content-Type: application/json",
                           "Content-Encoding: gzip"),)))
    stack.gateway({"controllers": [raw_controller(raw)]}, "--max-upstream-body-size", "8000000")
    started = time.monotonic()
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    error = orjson.loads(body)["error"]
    assert status == 502 and error["code"] == "bad_upstream_response"
    assert "inflates past max_upstream_body_size (8000000 bytes)" in error["message"]
    assert time.monotonic() - started < 10


def test_an_answer_over_max_upstream_body_size_is_a_502(stack: Stack) -> None:
    raw = stack.raw()
    big = orjson.dumps({"id": "x", "choices": [], "filler": "z" * 2_000_000})
    raw.cue(Script((answer(big, "Content-Type: application/json"),)))
    stack.gateway({"controllers": [raw_controller(raw)]}, "--max-upstream-body-size", "1000000")
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    error = orjson.loads(body)["error"]
    assert status == 502 and error["code"] == "bad_upstream_response"
    assert f"is {len(big)} bytes, over max_upstream_body_size (1000000)" in error["message"]
    stack.request("POST", "/v1/chat/completions", BODY)
    assert raw.requests[1].connection != raw.requests[0].connection  # the unread answer's connection is gone


def test_an_event_that_never_ends_ends_the_stream_with_the_error_event(stack: Stack) -> None:
    raw = stack.raw()
    raw.cue(Script((SSE_HEAD + chunk(ROLE), *(chunk(piece) for piece in ENDLESS)), pause=0.005, hang=True))
    stack.gateway({"controllers": [raw_controller(raw)]}, "--max-event-size", "100000")
    status, _, body = stack.request("POST", "/v1/chat/completions", STREAM)
    events = [event for event in body.split(b"\n\n") if event]
    assert status == 200 and len(events) == 2 and events[0] + b"\n\n" == ROLE
    error = orjson.loads(events[1][len(b"data: "):])["error"]
    assert error["code"] == "upstream_stream_error" and "over max_event_size (100000 bytes)" in error["message"]
    started = time.monotonic()
    while raw.closed_by_peer == 0 and time.monotonic() - started < 5:
        time.sleep(0.02)
    assert raw.closed_by_peer == 1  # the upstream connection is dropped, not left streaming


def test_an_endless_first_event_fails_over(stack: Stack) -> None:
    raw, good = stack.raw(), stack.fake("good")
    raw.cue(Script((SSE_HEAD, *(chunk(piece) for piece in ENDLESS)), hang=True))
    good.default = Cue(mode="stream", events=2)
    stack.gateway({"controllers": [raw_controller(raw, weight=9), openai_controller(good)]},
                  "--max-event-size", "100000")
    status, headers, body = stack.request("POST", "/v1/chat/completions", STREAM)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "good"
    assert body.endswith(b"data: [DONE]\n\n") and len(raw.requests) == 1


def test_endless_comments_before_the_first_event_fail_over(stack: Stack) -> None:
    raw, good = stack.raw(), stack.fake("good")
    raw.cue(Script((SSE_HEAD, *(chunk(b": keep-alive\n\n" * 500) for _ in range(30))), hang=True))
    good.default = Cue(mode="stream", events=2)
    stack.gateway({"controllers": [raw_controller(raw, weight=9), openai_controller(good)]},
                  "--max-event-size", "100000")
    status, headers, _ = stack.request("POST", "/v1/chat/completions", STREAM)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "good"
