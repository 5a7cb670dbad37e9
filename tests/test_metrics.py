"""Metrics and the access log after scripted traffic."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from chatgpt_apiserver.ops.logs import BufferedHandler, configure_logging
from chatgpt_apiserver.web.access import FIELDS

from .fake_upstream import Cue
from .harness import Stack, openai_controller

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@contextlib.contextmanager
def access_log(fmt: str) -> Iterator[Callable[[], str]]:
    """The gateway's log captured in `fmt`; what it yields waits for the first access line and returns it."""
    out = io.StringIO()
    handler = configure_logging("info", fmt, stream=out)

    def first_line() -> str:
        deadline = time.monotonic() + 5  # the line is written just after the response leaves
        while "chatgpt_apiserver.access" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
            handler.flush()  # the server flushes buffered lines every quarter second; this test has no server loop
        return next(line for line in out.getvalue().splitlines() if "chatgpt_apiserver.access" in line)

    try:
        yield first_line
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def scrape(stack: Stack, **headers: str) -> dict[str, float]:
    status, got, body = stack.request("GET", "/metrics", headers=headers or None)
    assert status == 200 and got["content-type"].startswith("text/plain")
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_after_traffic_with_a_forced_429(stack: Stack) -> None:
    limited, other = stack.fake("limited", ("gpt-4o",)), stack.fake("other", ("gpt-4o",))
    limited.cue(Cue(mode="status", status=429, headers={"Retry-After": "30"}))
    other.default = Cue(mode="stream", events=3)
    stack.gateway({"controllers": [openai_controller(limited, weight=5, rpm=600, tpm=100000),
                                   openai_controller(other)]})
    assert stack.request("GET", "/v1/models")[0] == 200  # the models the upstreams report get their own label
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    assert stack.request("POST", "/v1/chat/completions", {**BODY, "stream": True})[0] == 200
    assert stack.request("POST", "/v1/chat/completions", {"model": ""})[0] == 400
    m = scrape(stack)
    assert m['chatgpt_apiserver_upstream_attempts_total{controller="limited",outcome="429"}'] == 1
    assert m['chatgpt_apiserver_upstream_attempts_total{controller="other",outcome="ok"}'] == 2
    assert m['chatgpt_apiserver_upstream_retries_total{controller="other"}'] == 1
    assert m['chatgpt_apiserver_controller_state{controller="limited",state="cooling"}'] == 1
    assert m['chatgpt_apiserver_controller_state{controller="other",state="ok"}'] == 1
    assert 25 < m['chatgpt_apiserver_controller_cooldown_seconds{controller="limited"}'] <= 30
    assert m['chatgpt_apiserver_controller_bucket_capacity{bucket="requests",controller="limited"}'] == 600
    assert m['chatgpt_apiserver_controller_bucket_level{bucket="requests",controller="limited"}'] <= 0.5
    assert m['chatgpt_apiserver_requests_total{controller="other",route="chat_completions",status="200"}'] == 2
    assert m['chatgpt_apiserver_requests_total{controller="-",route="chat_completions",status="400"}'] == 1
    assert m['chatgpt_apiserver_tokens_total{controller="other",kind="completion",model="gpt-4o"}'] == 7 + 3
    assert m['chatgpt_apiserver_tokens_total{controller="other",kind="prompt",model="gpt-4o"}'] == 10
    assert m["chatgpt_apiserver_time_to_first_token_seconds_count"] == 1
    assert m['chatgpt_apiserver_request_duration_seconds_count{route="chat_completions"}'] == 3
    assert m["chatgpt_apiserver_requests_in_flight"] == 0 and m["chatgpt_apiserver_queue_length"] == 0
    assert m['chatgpt_apiserver_controller_in_flight{controller="limited"}'] == 0
    assert "chatgpt_apiserver_queue_wait_seconds_count" in m
    _status, _, raw = stack.request("GET", "/metrics")
    assert b"sk-" not in raw


def test_metrics_take_the_admin_key(stack: Stack) -> None:
    stack.gateway({"admin_key": "admin-secret", "client_keys": ["c"], "controllers": [{"type": "mock"}]})
    assert stack.request("GET", "/metrics")[0] == 401
    assert scrape(stack, Authorization="Bearer admin-secret")["chatgpt_apiserver_requests_in_flight"] == 0


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_lines(stack: Stack, fmt: str) -> None:
    fake = stack.fake("up")
    fake.default = Cue(headers={"x-request-id": "req_0a1b2c3d"})  # OpenAI's own id for the request
    stack.gateway({"controllers": [openai_controller(fake)]}, "--log-format", fmt)
    with access_log(fmt) as first_line:
        status, headers, body = stack.request("POST", "/v1/chat/completions", BODY, headers={
            "Content-Type": "application/json", "X-Request-Id": "trace-42"})
        line = first_line()
    assert status == 200 and headers["x-request-id"] == "trace-42"
    assert headers["x-upstream-request-id"] == "req_0a1b2c3d"
    assert fake.chat_requests[0].headers["X-Request-Id"] == "trace-42"
    if fmt == "json":
        entry = orjson.loads(line)
        assert entry["request_id"] == "trace-42" and entry["status"] == 200 and entry["controller"] == "up"
        assert entry["model"] == "gpt-4o" and entry["stream"] is False and entry["attempts"] == 1
        assert entry["bytes"] == len(body) and entry["tokens"] == 12
        assert entry["peer"] == "127.0.0.1" and entry["client"] == "-"
        assert entry["method"] == "POST" and entry["path"] == "/v1/chat/completions"
        assert entry["time_ms"] >= entry["ttfb_ms"] > 0 and entry["time"].endswith("Z")
        assert entry["upstream_request_id"] == "req_0a1b2c3d"
        assert re.findall(r"(\w+)=", entry["message"]) == list(FIELDS)  # the text line's fields, the same
        assert [key for key in entry if key in FIELDS] == list(FIELDS)
    else:
        assert re.findall(r" (\w+)=", line) == list(FIELDS), line  # every field once, in order
        for field in ("request_id=trace-42", "status=200", "controller=up", "model=gpt-4o", "stream=False",
                      "attempts=1", f"bytes={len(body)}", "tokens=12", "peer=127.0.0.1", "client=-",
                      "upstream_request_id=req_0a1b2c3d"):
            assert field in line
        assert re.search(r"time_ms=[\d.]+ ttfb_ms=[\d.]+", line)


def test_a_request_its_client_left_is_logged_as_499_with_the_controller_that_had_it(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.default = Cue(mode="stall")
    stack.gateway({"controllers": [openai_controller(fake)]}, "--log-format", "json")
    with access_log("json") as first_line:
        data = orjson.dumps(BODY)
        with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            deadline = time.monotonic() + 5
            while not fake.chat_requests and time.monotonic() < deadline:
                time.sleep(0.01)
        entry = orjson.loads(first_line())  # (the client has left)
    assert entry["status"] == 499 and entry["controller"] == "up" and entry["bytes"] == 0, entry
    assert scrape(stack)['chatgpt_apiserver_requests_total{controller="up",route="chat_completions",status="499"}'] == 1


def test_deferred_lines_keep_their_order_and_a_bad_one_costs_only_itself() -> None:
    out = io.StringIO()
    handler = configure_logging("info", "text", stream=out)
    try:
        assert isinstance(handler, BufferedHandler)
        handler.defer(lambda n: f"first {n}\n", 1)
        handler.defer(lambda n: f"{1 / n}\n", 0)  # raises when rendered
        logging.getLogger("chatgpt_apiserver.test").warning("a warning flushes at once")
        handler.defer(lambda n: f"last {n}\n", 3)
        handler.flush()
        assert handler.wait_written(5)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "first 1" and "could not be rendered: ZeroDivisionError" in lines[1]
    assert lines[2].endswith("a warning flushes at once") and lines[3] == "last 3"


def test_made_up_model_names_do_not_grow_the_metrics(stack: Stack) -> None:
    fake = stack.fake("up", ("gpt-4o",))
    stack.gateway({"controllers": [openai_controller(fake)]})
    assert stack.request("GET", "/v1/models")[0] == 200
    connection_body = {"messages": [{"role": "user", "content": "hi"}]}
    for index in range(2500):
        assert stack.request("POST", "/v1/chat/completions", {**connection_body, "model": f"made-up-{index}"})[0] == 200
    assert stack.request("POST", "/v1/chat/completions", {**connection_body, "model": "gpt-4o"})[0] == 200
    _status, _, raw = stack.request("GET", "/metrics")
    assert len(raw) < 300_000
    assert b"made-up" not in raw
    m = scrape(stack)
    assert m['chatgpt_apiserver_tokens_total{controller="up",kind="prompt",model="other"}'] == 5 * 2500
    assert m['chatgpt_apiserver_tokens_total{controller="up",kind="prompt",model="gpt-4o"}'] == 5


def test_a_very_long_model_name_is_never_a_metric_label(stack: Stack) -> None:
    fake = stack.fake("up")  # it answers any model, and says which it was asked for
    stack.gateway({"controllers": [openai_controller(fake)], "admin_key": "admin-key",
                   "clients": [{"name": "app", "key": "app-key"}]})
    long_name = "m" * 10_000
    headers = {"Content-Type": "application/json", "Authorization": "Bearer app-key"}
    for model in (long_name, "gpt-4o"):
        assert stack.request("POST", "/v1/chat/completions", {**BODY, "model": model}, headers)[0] == 200
    with access_log("text") as first_line:
        assert stack.request("POST", "/v1/chat/completions", {**BODY, "model": long_name}, headers)[0] == 200
        line = first_line()
    assert len(line) < 1000 and f'model="{"m" * 128}…"' in line, line[:300]
    m = scrape(stack, Authorization="Bearer admin-key")
    assert all(len(name) < 400 for name in m), max(m, key=len)[:200]
    assert m['chatgpt_apiserver_tokens_total{controller="up",kind="prompt",model="(long model name)"}'] == 10
    assert m['chatgpt_apiserver_client_requests_total{client="app",model="(long model name)"}'] == 2


def test_a_failed_request_logs_its_attempts_and_last_controller(stack: Stack) -> None:
    first, second = stack.fake("first"), stack.fake("second")
    first.default = second.default = Cue(mode="status", status=503)
    stack.gateway({"controllers": [openai_controller(first, weight=9), openai_controller(second)]},
                  "--breaker-failures", "100")
    with access_log("json") as first_line:
        status = stack.request("POST", "/v1/chat/completions", BODY)[0]
        entry = orjson.loads(first_line())
    assert status == 500 and entry["status"] == 500
    assert entry["attempts"] == 2 and entry["controller"] == "second"
