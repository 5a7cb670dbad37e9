"""Faults end to end: stalls, slow streams, disconnects, timeouts, head-of-line blocking."""

from __future__ import annotations

import http.client
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import orjson

from .fake_upstream import Cue
from .harness import Stack, openai_controller, raw_exchange

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True}


def wait_until(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def open_request(stack: Stack, body: dict[str, object]) -> socket.socket:
    """Send a request on a raw socket and return it unread, so the test can hang up whenever it likes."""
    sock = socket.create_connection(("127.0.0.1", stack.port))
    data = orjson.dumps(body)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def test_upstream_that_never_answers_gets_504_and_its_socket_closed(stack: Stack) -> None:
    fake = stack.fake("mute")
    fake.default = Cue(mode="stall")
    stack.gateway({"controllers": [openai_controller(fake)]}, "--request-timeout", "0.4")
    started = time.monotonic()
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 504 and 0.35 < time.monotonic() - started < 3
    assert orjson.loads(body)["error"]["code"] == "upstream_timeout"
    assert wait_until(lambda: fake.connections_closed_early == 1)


def test_first_byte_timeout_fails_over(stack: Stack) -> None:
    mute, good = stack.fake("mute"), stack.fake("good")
    mute.default = Cue(mode="stall")
    stack.gateway({"controllers": [openai_controller(mute, weight=9), openai_controller(good)]},
                  "--first-byte-timeout", "0.3", "--retry-on-timeout")  # resending a timed-out request is opt-in
    status, headers, _ = stack.request("POST", "/v1/chat/completions", STREAM)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "good"


def test_connect_timeout_fails_over(stack: Stack) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so connecting hangs.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(blackhole.getsockname())
        fillers.append(filler)
    good = stack.fake("good")
    dead = {"type": "openai", "name": "blackhole", "weight": 9,
            "config": {"api_key": "sk-x-0123456789abcdef", "base_url": f"http://127.0.0.1:{blackhole.getsockname()[1]}/v1"}}
    try:
        stack.gateway({"controllers": [dead, openai_controller(good)]}, "--connect-timeout", "0.3")
        started = time.monotonic()
        status, headers, _ = stack.request("POST", "/v1/chat/completions", BODY)
        assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "good"
        assert time.monotonic() - started < 3
    finally:
        for filler in fillers:
            filler.close()
        blackhole.close()


def test_stream_that_stalls_after_two_events_ends_with_the_error_event(stack: Stack) -> None:
    fake = stack.fake("a")
    fake.default = Cue(mode="stall_after", events=5, after=2)
    stack.gateway({"controllers": [openai_controller(fake)]}, "--stream-idle-timeout", "0.4")
    status, _, body = stack.request("POST", "/v1/chat/completions", STREAM)
    events = [e for e in body.split(b"\n\n") if e]
    assert status == 200
    assert len(events) == 1 + 2 + 1  # role, two deltas, error
    assert b"timed out" in events[-1] and b"data: [DONE]" not in body
    assert wait_until(lambda: fake.connections_closed_early == 1)


def test_a_slow_stream_that_keeps_sending_is_never_cut(stack: Stack) -> None:
    fake = stack.fake("a")
    fake.default = Cue(mode="stream", events=8, interval=0.1)  # 0.5x the idle timeout, 4x it in total
    stack.gateway({"controllers": [openai_controller(fake)]}, "--stream-idle-timeout", "0.2",
                  "--request-timeout", "0.3", "--first-byte-timeout", "0.3")
    status, _, body = stack.request("POST", "/v1/chat/completions", STREAM)
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert body.count(b"data: ") == 1 + 8 + 1 + 1


def test_non_streaming_total_timeout(stack: Stack) -> None:
    fake = stack.fake("slow")
    fake.default = Cue(delay=1.0)
    stack.gateway({"controllers": [openai_controller(fake)]}, "--request-timeout", "0.3")
    status, _, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 504


def test_a_body_slower_than_the_first_byte_timeout_gets_the_request_timeout(stack: Stack) -> None:
    fake = stack.fake("slow")
    fake.default = Cue(mode="slow_json", interval=0.6)  # the head at once, the body's end 0.6 s later
    stack.gateway({"controllers": [openai_controller(fake)]}, "--first-byte-timeout", "0.3", "--request-timeout", "3")
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200 and orjson.loads(body)["choices"][0]["message"]["content"] == "hello"


def test_a_body_slower_than_the_request_timeout_is_a_504(stack: Stack) -> None:
    fake = stack.fake("slow")
    fake.default = Cue(mode="slow_json", interval=5)
    stack.gateway({"controllers": [openai_controller(fake)]}, "--first-byte-timeout", "0.3", "--request-timeout", "0.8")
    started = time.monotonic()
    status, _, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 504 and b"timed out waiting for the response" in body
    assert 0.7 < time.monotonic() - started < 2.5


def test_client_disconnect_before_headers_cancels_the_upstream_call(stack: Stack) -> None:
    fake = stack.fake("a")
    fake.default = Cue(mode="stall")
    stack.gateway({"controllers": [openai_controller(fake, max_concurrency=1, tpm=100000)]})
    sock = open_request(stack, BODY)
    assert wait_until(lambda: len(fake.chat_requests) == 1)
    sock.close()
    assert wait_until(lambda: fake.connections_closed_early == 1)
    assert wait_until(lambda: stack.running.gateway.in_flight == 0)  # type: ignore[union-attr]
    gateway = stack.running.gateway  # type: ignore[union-attr]
    assert gateway.store.in_flight(gateway.controllers[0]) == 0  # the slot is free again
    fake.default = Cue()
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200


def test_client_disconnect_mid_stream_cancels_the_upstream_stream(stack: Stack) -> None:
    fake = stack.fake("a")
    fake.default = Cue(mode="stream", events=50, interval=0.1)
    stack.gateway({"controllers": [openai_controller(fake, max_concurrency=1)]})
    sock = open_request(stack, STREAM)
    received = b""
    while b'"content":"hello0 "' not in received:
        received += sock.recv(65536)
    sock.close()
    assert wait_until(lambda: fake.connections_closed_early == 1)
    gateway = stack.running.gateway  # type: ignore[union-attr]
    assert wait_until(lambda: gateway.store.in_flight(gateway.controllers[0]) == 0)


def test_no_head_of_line_blocking(stack: Stack) -> None:
    stalled, quick = stack.fake("stalled"), stack.fake("quick")
    stalled.default = Cue(mode="stall_after", events=5, after=1)
    stack.gateway({"controllers": [openai_controller(stalled, models=["slow-model"]), openai_controller(quick)]},
                  "--stream-idle-timeout", "30")
    sock = open_request(stack, {**STREAM, "model": "slow-model"})
    try:
        assert wait_until(lambda: len(stalled.chat_requests) == 1)

        def timed(_: int) -> float:
            started = time.monotonic()
            assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
            return time.monotonic() - started

        with ThreadPoolExecutor(10) as pool:
            latencies = sorted(pool.map(timed, range(50)))
        assert latencies[len(latencies) // 2] < 0.1 and latencies[-1] < 1.0
    finally:
        sock.close()


def test_over_the_concurrent_request_cap_is_503_with_retry_after(stack: Stack) -> None:
    fake = stack.fake("a")
    fake.default = Cue(mode="stall")
    stack.gateway({"controllers": [openai_controller(fake)]}, "--max-concurrent-requests", "2")
    socks = [open_request(stack, BODY) for _ in range(2)]
    try:
        assert wait_until(lambda: len(fake.chat_requests) == 2)
        status, headers, body = stack.request("POST", "/v1/chat/completions", BODY)
        assert status == 503 and headers["retry-after"] == "1"
        assert orjson.loads(body)["error"]["code"] == "overloaded"
    finally:
        for sock in socks:
            sock.close()


def test_body_over_the_limit_is_413_without_an_upstream_call(stack: Stack) -> None:
    fake = stack.fake("a")
    stack.gateway({"controllers": [openai_controller(fake)]}, "--max-body-size", "1000")
    for size in (1500, 5000, 50_000_000):  # just over, and far over (once the old hard cap's 400)
        headers = {"Content-Type": "application/json", "Content-Length": str(size)}
        status, got, body = raw_exchange(stack.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                         + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in
                                                    headers.items()) + b"\r\n" + b"x" * min(size, 2000))
        assert status == 413, size
        assert orjson.loads(body)["error"] == {
            "message": f"The request body is {size} bytes; the limit is 1000.", "type": "invalid_request_error",
            "param": None, "code": "request_too_large"}
        assert got["connection"] == "close"  # the rest of the body is not read
    # A chunked body declares no length: it is counted as it comes and refused once over.
    chunks = b"".join(b"%x\r\n%s\r\n" % (300, b"y" * 300) for _ in range(5)) + b"0\r\n\r\n"
    status, _, body = raw_exchange(stack.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                   b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n" + chunks)
    assert status == 413 and "over the limit of 1000 bytes" in orjson.loads(body)["error"]["message"]
    assert not fake.chat_requests


def test_slow_loris_clients_are_cut_off(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]}, "--client-idle-timeout", "0.5",
                  "--client-body-timeout", "0.5")
    headers_only = socket.create_connection(("127.0.0.1", stack.port))
    headers_only.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    slow_body = socket.create_connection(("127.0.0.1", stack.port))
    slow_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                      b"X-Request-Id: slow-1\r\n\r\n{")
    for sock in (headers_only, slow_body):
        sock.settimeout(5)
    started = time.monotonic()
    assert headers_only.recv(1024) == b""  # the server hung up: there is no request to answer
    assert time.monotonic() - started < 3
    response = http.client.HTTPResponse(slow_body)  # the late body gets an answer, then the hang-up
    response.begin()
    assert response.status == 408 and response.getheader("Connection") == "close"
    assert response.getheader("X-Request-Id") == "slow-1"
    assert orjson.loads(response.read())["error"] == {
        "message": "The request body did not arrive within 0.5 seconds.", "type": "invalid_request_error",
        "param": None, "code": "request_timeout"}
    assert slow_body.recv(1024) == b""
    assert time.monotonic() - started < 3
    for sock in (headers_only, slow_body):
        sock.close()


def hung_up_within(sock: socket.socket, low: float, high: float) -> bool:
    """The server closed `sock` (sending nothing more) between `low` and `high` seconds from now."""
    sock.settimeout(high + 2)
    started = time.monotonic()
    closed = sock.recv(1024) == b""
    took = time.monotonic() - started
    sock.close()
    return closed and low <= took <= high


def test_idle_keep_alive_connections_are_closed_but_slow_answers_are_not(stack: Stack) -> None:
    fake = stack.fake("slow")
    fake.default = Cue(delay=1.2)  # the upstream takes longer than both client timeouts
    stack.gateway({"controllers": [openai_controller(fake)]}, "--client-idle-timeout", "0.5",
                  "--client-body-timeout", "0.5")
    sock = open_request(stack, BODY)
    sock.settimeout(5)
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")  # the client waited 1.2 s for it: not a slow client
    assert hung_up_within(sock, 0.3, 1.5)  # then the kept-alive connection idles past 0.5 s


def test_a_reload_changes_the_client_timeouts(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]}, "--client-idle-timeout", "30")
    gateway = stack.running.gateway  # type: ignore[union-attr]
    stack.loop.run(gateway.reload(stack.settings({"controllers": [{"type": "mock"}]},
                                                 "--client-idle-timeout", "0.3")))
    assert hung_up_within(socket.create_connection(("127.0.0.1", stack.port)), 0.1, 2.5)  # not 30 s
