"""client_write_timeout: a client that stops reading is cut off, and what it held is freed; one that reads
slowly is not, however long one write takes."""

from __future__ import annotations

import http.client
import socket
import time

import orjson

from .fake_upstream import Cue
from .harness import Stack, openai_controller, raw_controller
from .raw_upstream import SSE_HEAD, Script, answer, chunk

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True}


def unread_request(stack: Stack, body: dict[str, object], receive_buffer: int = 4096) -> socket.socket:
    """Send a request from a socket with a small receive buffer, and read nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", stack.port))
    data = orjson.dumps(body)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def read_to_end(sock: socket.socket, timeout: float) -> bytes:
    """Everything until the peer closes; raises socket.timeout if it does not within `timeout` of silence."""
    sock.settimeout(timeout)
    received = []
    while data := sock.recv(1 << 20):
        received.append(data)
    return b"".join(received)


def test_a_client_that_stops_reading_a_stream_is_cut_off_and_frees_its_slot_and_upstream(stack: Stack) -> None:
    fake = stack.fake("fast")
    # ~12 MB as fast as it can go, then the stream stays open: however much the buffers took, it is unfinished.
    fake.default = Cue(mode="stall_after", events=3000, after=2999, text="x" * 4000)
    stack.gateway({"controllers": [openai_controller(fake, max_concurrency=1)]}, "--client-write-timeout", "0.5")
    gateway = stack.running.gateway  # type: ignore[union-attr]
    controller = gateway.controllers[0]

    def in_flight() -> int:
        return gateway.store.in_flight(controller)

    sock = unread_request(stack, STREAM)
    started = time.monotonic()
    try:
        while in_flight() == 0 and time.monotonic() - started < 5:
            time.sleep(0.01)
        assert in_flight() == 1  # the stream holds the controller's one slot
        while (in_flight() or fake.connections_closed_early == 0) and time.monotonic() - started < 10:
            time.sleep(0.02)
        held = time.monotonic() - started
        assert in_flight() == 0 and fake.connections_closed_early == 1  # slot and upstream freed
        assert 0.5 <= held < 8 and gateway.in_flight == 0
        received = read_to_end(sock, 5)  # what the kernel buffers held, then the gateway's close
        assert b"data: [DONE]" not in received
    finally:
        sock.close()
    fake.default = Cue()
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200  # the slot serves again


def test_a_client_that_does_not_read_a_large_answer_is_cut_off(stack: Stack) -> None:
    raw = stack.raw()
    big = orjson.dumps({"id": "x", "object": "chat.completion", "choices": [], "filler": "z" * 20_000_000})
    raw.default = Script((answer(big, "Content-Type: application/json"),))
    stack.gateway({"controllers": [raw_controller(raw)]}, "--client-write-timeout", "0.5")
    sock = unread_request(stack, BODY)
    try:
        time.sleep(2.5)  # nothing read: past the timeout, the gateway hangs up
        received = read_to_end(sock, 5)
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 200 OK") and len(received) < len(big)
    assert stack.running.gateway.in_flight == 0  # type: ignore[union-attr]


def test_a_slow_client_that_keeps_reading_is_never_cut_off(stack: Stack) -> None:
    raw = stack.raw()
    event = b'data: {"id":"x","object":"chat.completion.chunk","choices":[],"filler":"' + b"z" * 12_000_000 + b'"}\n\n'
    role = b'data: {"id":"x","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    raw.default = Script((SSE_HEAD + chunk(role), chunk(event) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"))
    stack.gateway({"controllers": [raw_controller(raw)]}, "--client-write-timeout", "1")
    sock = unread_request(stack, STREAM, receive_buffer=65536)
    received = bytearray()
    started = time.monotonic()
    try:
        sock.settimeout(10)
        while not received.endswith(b"0\r\n\r\n") and time.monotonic() - started < 60:
            data = sock.recv(65536)
            assert data, "the gateway hung up on a client that was reading"
            received += data
            time.sleep(0.025)  # ~2.5 MB/s: sending the 12 MB event takes longer than the timeout
    finally:
        sock.close()
    assert b"data: [DONE]" in received and time.monotonic() - started > 2


def test_client_connections_keep_nagle_off_after_an_answer(stack: Stack) -> None:
    """Nagle stays off for a client connection's life (Tornado's server turned it back on after each answer), so
    a stream's next event never waits for the client's ACK."""
    fake = stack.fake()
    stack.gateway({"controllers": [openai_controller(fake)]})
    running = stack.running
    assert running is not None
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        for body in (BODY, STREAM):
            connection.request("POST", "/v1/chat/completions", body=orjson.dumps(body))
            response = connection.getresponse()
            assert response.status == 200
            response.read()
        # Read on the loop thread, which owns the server's connections.
        flags = stack.loop.call(lambda: [conn.transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY) for conn in running.server.connections])
        assert len(flags) == 1  # the kept-alive connection, between requests
        assert flags[0] != 0
    finally:
        connection.close()
