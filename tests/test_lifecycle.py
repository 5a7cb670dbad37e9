"""The server as systemd drives it: SIGTERM drains, SIGHUP reloads (run as a real subprocess)."""

from __future__ import annotations

import asyncio
import gc
import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import orjson
import pytest

from chatgpt_apiserver.server import release_heap, settle_heap

from .fake_upstream import Cue, FakeUpstream
from .harness import Stack, openai_controller
from .test_process import clean_env, free_port, wait_for_port

STREAM = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class Server:
    """chatgpt-apiserver in a subprocess, with its log captured."""

    def __init__(self, config: Path, *args: str, port: int = 0) -> None:
        self.port = port or free_port()
        self.log = config.parent / "server.log"
        with open(self.log, "wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chatgpt_apiserver", "--config-file", str(config), "--port", str(self.port),
                 *args], env=clean_env(), stdout=subprocess.DEVNULL, stderr=log)
        if not port:
            wait_for_port(self.port, self.process)
            return
        deadline = time.monotonic() + 30  # the port is already open: wait for this process's own listener
        while "listening on" not in self.output():
            assert self.process.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.05)

    def request(self, body: Any, path: str = "/v1/chat/completions", method: str = "POST") -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request(method, path, body=orjson.dumps(body) if body is not None else None)
        response = connection.getresponse()
        result = response.status, response.read()
        connection.close()
        return result

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, signalled: bool = False) -> int:
        """SIGTERM (unless the test already sent it: a second one while exiting would kill it) and wait."""
        if not signalled and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def write_config(path: Path, fakes: list[FakeUpstream], **extra: Any) -> Path:
    path.write_bytes(orjson.dumps({"controllers": [openai_controller(f) for f in fakes], **extra}))
    return path


def stream_in_background(port: int, results: list[bytes]) -> threading.Thread:
    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/chat/completions", body=orjson.dumps(STREAM))
        results.append(connection.getresponse().read())
        connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_sigterm_drains_an_open_stream_then_exits_0(stack: Stack, tmp_path: Path) -> None:
    fake = stack.fake("up")
    fake.default = Cue(mode="stream", events=30, interval=0.1)
    server = Server(write_config(tmp_path / "c.json", [fake]), "--shutdown-timeout", "10")
    results: list[bytes] = []
    probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # kept alive, idle at SIGTERM
    try:
        probe.request("GET", "/readyz")
        ready = probe.getresponse()
        assert ready.status == 200 and orjson.loads(ready.read())["status"] == "ready"
        thread = stream_in_background(server.port, results)
        while not fake.chat_requests:
            time.sleep(0.02)
        time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert probe.sock is not None
        probe.sock.settimeout(5)
        assert probe.sock.recv(1) == b""  # the idle keep-alive connection is closed at once...
        assert time.monotonic() - signalled < 1.5  # ...not when the stream (2.8 s more) ends
        try:  # while it drains, the listener no longer accepts
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            accepting = True
        except OSError:
            accepting = False
        assert not accepting
        thread.join(30)
    finally:
        probe.close()
        code = server.stop(signalled=True)
    assert code == 0
    assert results and results[0].endswith(b"data: [DONE]\n\n")  # the stream finished


def test_sigterm_ends_streams_past_the_shutdown_timeout_with_the_error_event(stack: Stack, tmp_path: Path) -> None:
    fake = stack.fake("up")
    fake.default = Cue(mode="stream", events=100, interval=0.1)
    server = Server(write_config(tmp_path / "c.json", [fake]), "--shutdown-timeout", "0.5")
    results: list[bytes] = []
    thread = stream_in_background(server.port, results)
    while not fake.chat_requests:
        time.sleep(0.02)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    thread.join(30)
    assert server.process.wait(30) == 0
    assert time.monotonic() - started < 5
    last = [event for event in results[0].split(b"\n\n") if event][-1]
    assert b"shutting down" in last and last.startswith(b'data: {"error"')


def test_sighup_reload_valid_and_invalid(stack: Stack, tmp_path: Path) -> None:
    first, second = stack.fake("first"), stack.fake("second")
    first.default = Cue(mode="stream", events=15, interval=0.1)
    config = write_config(tmp_path / "c.json", [first])
    server = Server(config)
    try:
        results: list[bytes] = []
        thread = stream_in_background(server.port, results)  # in flight across both reloads
        while not first.chat_requests:
            time.sleep(0.02)
        write_config(config, [second])
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reloaded" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        status, _ = server.request({**STREAM, "stream": False})
        assert status == 200 and len(second.chat_requests) == 1
        config.write_text('{"controllers": [{"type": "nope"}], "max_attempts": 0}')
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload failed" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        output = server.output()
        assert "unknown controller type 'nope'" in output and "max_attempts in" in output
        assert server.request({**STREAM, "stream": False})[0] == 200  # still serving the last good config
        assert len(second.chat_requests) == 2
        thread.join(30)
        assert results[0].endswith(b"data: [DONE]\n\n")  # the in-flight stream was never dropped
    finally:
        assert server.stop() == 0


def test_sighup_applies_cors_origins_and_log_format_under_load(stack: Stack, tmp_path: Path) -> None:
    fake = stack.fake("up")
    config = write_config(tmp_path / "c.json", [fake], cors_origins=["https://a.example"], log_format="text")
    server = Server(config)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:  # keeps the gateway busy across the reload
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        while not stop.is_set():
            connection.request("POST", "/v1/chat/completions", body=orjson.dumps({**STREAM, "stream": False}))
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()

    def allowed(origin: str) -> Optional[str]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/v1/models", headers={"Origin": origin})
        response = connection.getresponse()
        response.read()
        connection.close()
        return response.getheader("Access-Control-Allow-Origin")

    workers = [threading.Thread(target=load) for _ in range(4)]
    try:
        for worker in workers:
            worker.start()
        assert allowed("https://a.example") == "https://a.example" and allowed("https://b.example") is None
        write_config(config, [fake], cors_origins=["https://b.example"], log_format="json", host="127.0.0.2")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reloaded" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # requests keep coming after the reload
        assert allowed("https://b.example") == "https://b.example" and allowed("https://a.example") is None
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        assert server.stop() == 0
    assert statuses and set(statuses) == {200}  # nothing was dropped
    lines = server.output().splitlines()
    reloaded = next(i for i, line in enumerate(lines) if "config reloaded" in line)
    assert any(line.startswith("20") and "chatgpt_apiserver.access" in line for line in lines[:reloaded])
    after = [orjson.loads(line) for line in lines[reloaded + 1:] if line.startswith("{")]
    assert any(entry["logger"] == "chatgpt_apiserver.access" and entry["status"] == 200 for entry in after)
    access_text_after = [line for line in lines[reloaded + 1:]
                         if line.startswith("20") and "chatgpt_apiserver.access" in line]
    assert access_text_after == []  # lines queued before the switch were written before the reload's line
    assert sum("host changed from 127.0.0.1 to 127.0.0.2; that takes a restart" in line for line in lines) == 1
def test_a_drain_closes_keep_alive_connections_and_says_so(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.default = Cue(mode="stream", events=10, interval=0.1)  # a stream of about a second holds the drain open
    stack.gateway({"controllers": [openai_controller(fake)]}, "--shutdown-timeout", "20")
    running = stack.running
    assert running is not None
    idle = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")  # now an idle keep-alive connection
    streaming = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    body = orjson.dumps(STREAM)
    streaming.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
    late = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
    body = orjson.dumps({**STREAM, "stream": False})
    late.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body[:10]))  # its body is still coming when the drain starts
    while not fake.chat_requests:
        time.sleep(0.02)
    started = time.monotonic()
    stopping = asyncio.run_coroutine_threadsafe(running.stop(), stack.loop.loop)
    stack.running = None
    assert idle.recv(1) == b"" and time.monotonic() - started < 1  # closed at once, not at the drain's end
    late.sendall(body[10:])
    answer = http.client.HTTPResponse(late)
    answer.begin()
    assert answer.status == 200 and answer.getheader("Connection") == "close"
    answer.read()
    assert late.recv(1) == b""  # and closed after that answer
    streamed = b""
    while chunk := streaming.recv(65536):  # the stream runs to its end; then the server hangs up
        streamed += chunk
    assert b"data: [DONE]\r\n" in streamed or b"data: [DONE]\n\n" in streamed
    stopping.result(10)
    assert time.monotonic() - started < 5  # the drain ended with its last request, not at its 20 s timeout
    for sock in (idle, streaming, late):
        sock.close()


@pytest.fixture
def gc_restored() -> Iterator[None]:
    """settle_heap changes process-wide collector settings: put the suite's back afterwards."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class Node:
    """Something that lives in a reference cycle, as much of a gateway's state does."""

    def __init__(self) -> None:
        self.me = self


def test_a_reload_frees_a_config_frozen_at_start_up_and_left_in_cycles(gc_restored: None) -> None:
    old = Node()
    alive = weakref.ref(old)
    settle_heap()  # start-up: `old` is frozen with the rest of the config
    del old  # a reload replaced it; only its own cycle holds it now
    release_heap()
    assert alive() is None, "a frozen config left in a cycle by a reload is never collected"


def test_what_is_alive_during_a_reload_stays_collectable(gc_restored: None) -> None:
    settle_heap()
    retiring = Node()  # a retiring controller, a request in flight: alive while the reload settles
    alive = weakref.ref(retiring)
    release_heap()
    del retiring  # it finishes later, leaving a cycle
    gc.collect()
    assert alive() is None, "an object alive during a reload was frozen and can never be collected"


def test_a_settled_heap_leaves_a_burst_of_live_objects_to_reference_counting(gc_restored: None) -> None:
    settle_heap()
    collections = gc.get_stats()[0]["collections"]
    burst = [{"delta": {"content": "tok"}} for _ in range(600)]  # 1,201 live containers, over CPython's 700
    del burst
    assert gc.get_stats()[0]["collections"] == collections, "the cyclic collector ran during a burst"
