"""Upstreams that misbehave at the byte level, end to end through the gateway, with the raw-socket fake."""

from __future__ import annotations

import time

import orjson

from .harness import Stack, raw_controller
from .raw_upstream import OK, Script, answer, gzip_bomb

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


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
