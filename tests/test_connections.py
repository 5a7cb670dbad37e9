"""Client connections (web/connections.py): requests parsed by llhttp as their bytes come, answered one at a time
and in order, with Tornado's framing, and bounded while they wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import BinaryIO

import orjson
import pytest

from chatgpt_apiserver.web import connections

from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .test_scheduling import wait_for

CHAT = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def post(request_id: str, body: bytes = CHAT, *extra: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Request-Id: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (request_id.encode(), len(body), b"".join(line + b"\r\n" for line in extra), body))


def get(path: str, request_id: str, *extra: bytes) -> bytes:
    return (b"GET %s HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n%s\r\n"
            % (path.encode(), request_id.encode(), b"".join(line + b"\r\n" for line in extra)))


def read_answer(reader: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One answer off a connection that may carry more: (status, lower-cased headers, body)."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = reader.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(reader.readline().strip(), 16):
            body += reader.read(size)
            reader.readline()
        reader.readline()
    else:
        body = reader.read()
    return int(status_line.split()[1]), headers, body


def connect(stack: Stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_pipelined_requests_are_answered_one_at_a_time_in_order(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.default = Cue(delay=0.2)  # the first answer is slow: what follows it waits, parsed, for its turn
    stack.gateway({"controllers": [openai_controller(fake)]})
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(post("first") + get("/healthz", "second") + post("third") + get("/v1/models", "fourth"))
        answers = [read_answer(reader) for _ in range(4)]
    assert [headers["x-request-id"] for _, headers, _ in answers] == ["first", "second", "third", "fourth"]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert orjson.loads(answers[0][2])["object"] == "chat.completion"
    assert orjson.loads(answers[2][2])["object"] == "chat.completion"
    assert orjson.loads(answers[3][2])["object"] == "list"
    assert len(fake.chat_requests) == 2 and fake.chat_requests[1].at - fake.chat_requests[0].at >= 0.15


def test_a_pipelining_client_is_read_no_further_while_its_request_waits(stack: Stack) -> None:
    """What waits behind an answer is held to what one read brought: reading pauses until that answer is out."""
    fake = stack.fake("up")
    fake.default = Cue(delay=1.0)
    stack.gateway({"controllers": [openai_controller(fake)]})
    running = stack.running
    assert running is not None
    one = get("/healthz", "next")
    flood = one * (32_000_000 // len(one))  # more than the kernel's buffers on both sides hold
    with connect(stack) as sock:
        sock.sendall(post("slow") + flood[:65536])
        while not fake.chat_requests:
            time.sleep(0.01)
        sock.setblocking(False)
        sent = 65536
        try:
            while sent < len(flood):
                sent += sock.send(flood[sent:sent + 1 << 20])
        except BlockingIOError:
            pass  # the gateway stopped reading: the kernel buffers are full
        states = stack.loop.call(lambda: [(conn.transport.is_reading(), len(conn._held or ()))
                                          for conn in running.server.connections])
    assert sent < len(flood)
    (reading, held), = states
    assert not reading and 0 < held <= 2 * (256 * 1024 // len(one) + 2)  # a read's worth of events, at most


def test_a_client_that_expects_100_continue_is_told_to_go_on_once_admitted(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(post("expecting", b"", b"Expect: 100-continue").replace(b"Content-Length: 0",
                                                                            b"Content-Length: %d" % len(CHAT)))
        assert reader.readline() == b"HTTP/1.1 100 (Continue)\r\n" and reader.readline() == b"\r\n"
        sock.sendall(CHAT)
        status, headers, _ = read_answer(reader)
    assert status == 200 and headers["x-request-id"] == "expecting"
    assert fake.chat_requests[0].body == CHAT


def test_a_request_sent_a_byte_at_a_time_is_read_whole(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    with connect(stack) as sock, sock.makefile("rb") as reader:
        for byte in post("trickle"):
            sock.send(bytes([byte]))
        status, headers, _ = read_answer(reader)
    assert status == 200 and headers["x-request-id"] == "trickle"
    assert fake.chat_requests[0].body == CHAT


def test_a_head_that_trickles_past_the_limit_gets_431(stack: Stack) -> None:
    """llhttp holds a header line until it ends: the bytes of a head still coming count against the limit too."""
    stack.gateway({"controllers": [{"type": "mock"}]}, "--max-header-size", "4096")
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: ")
        for _ in range(6):
            time.sleep(0.02)
            sock.sendall(b"a" * 1000)  # one header line, never ended
        status, headers, body = read_answer(reader)
        assert reader.read() == b""  # then the gateway hangs up
    assert status == 431 and headers["connection"] == "close"
    assert orjson.loads(body)["error"]["code"] == "request_header_fields_too_large"


def test_an_upgrade_is_not_taken_its_request_is_answered_and_the_connection_closed(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]})
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(get("/healthz", "upgrade", b"Connection: Upgrade", b"Upgrade: websocket") + b"\x81\x05hello")
        status, headers, _ = read_answer(reader)
        assert reader.read() == b""
    assert status == 200 and headers["x-request-id"] == "upgrade"


def test_http10_without_keep_alive_is_answered_and_closed(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]})
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        status, headers, body = read_answer(reader)
        assert reader.read() == b""
    assert status == 200 and "content-length" in headers and orjson.loads(body)


def test_a_request_without_a_valid_host_gets_a_400_in_openais_shape(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]})
    for head in (b"GET /healthz HTTP/1.1\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
                 b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"):
        with connect(stack) as sock, sock.makefile("rb") as reader:
            sock.sendall(head)
            status, headers, body = read_answer(reader)
            assert reader.read() == b""
        assert status == 400 and headers["connection"] == "close", head
        assert orjson.loads(body)["error"]["code"] == "malformed_http_request"


def test_what_was_pipelined_behind_a_refused_request_is_dropped_and_the_connection_closes(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]})
    running = stack.running
    assert running is not None
    refused = b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    for after in (get("/healthz", "after"), b"\x16\x03\x01 not http at all\r\n\r\n"):
        with connect(stack) as sock, sock.makefile("rb") as reader:
            sock.sendall(get("/healthz", "first") + refused + after)
            assert read_answer(reader)[0] == 200
            status, headers, _ = read_answer(reader)
            assert status == 404 and headers["connection"] == "close"
            assert reader.read() == b""  # nothing for what followed it
        assert wait_for(lambda: not stack.loop.call(lambda: len(running.server.connections)))
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_pipelined_request_whose_body_is_slow_gets_its_408(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]}, "--client-body-timeout", "1")
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(post("whole") + post("slow")[:-5])  # the second body never ends
        answers = [read_answer(reader)[:2] for _ in range(2)]
    assert [(status, headers["x-request-id"]) for status, headers in answers] == [(200, "whole"), (408, "slow")]


def test_trailers_past_the_head_limit_get_431_and_are_never_held(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]}, "--max-header-size", "4096")
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n0\r\n" % (len(CHAT), CHAT))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"a:b\r\n" * 40_000)  # trailer lines that never end: answered long before they would
        status, headers, body = read_answer(reader)
    assert status == 431 and headers["connection"] == "close"
    assert orjson.loads(body)["error"]["code"] == "request_header_fields_too_large"


def test_the_last_answer_reaches_a_slow_reader_before_the_connection_closes(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grace a closing connection gets counts from when its last answer has left, not from its end."""
    monkeypatch.setattr(connections, "CLOSING_GRACE", 0.3)
    fake = stack.fake("up")
    fake.default = Cue(text="x" * 12_000_000)  # more than the kernel's socket buffers hold
    stack.gateway({"controllers": [openai_controller(fake)]}, "--client-idle-timeout", "1")  # a sweep each 0.2 s
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 262144)  # fixed: no window growing to megabytes
    sock.connect(("127.0.0.1", stack.port))
    received = b""
    with sock:
        sock.sendall(post("big", CHAT, b"Connection: close"))
        while chunk := sock.recv(262144):  # at ~10 MB/s: the answer takes a second to leave
            received += chunk
            time.sleep(0.02)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head.split(b"\r\n")
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "x" * 12_000_000


def test_a_drain_answers_a_request_whose_head_has_begun_on_a_kept_alive_connection(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]})
    running = stack.running
    assert running is not None
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(get("/healthz", "first"))
        assert read_answer(reader)[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # half a head
        assert wait_for(lambda: stack.loop.call(lambda: all(c.head_begun() for c in running.server.connections)))
        stopping = asyncio.run_coroutine_threadsafe(running.stop(), stack.loop.loop)
        stack.running = None
        time.sleep(0.3)
        sock.sendall(b"X-Request-Id: second\r\n\r\n")
        status, headers, _ = read_answer(reader)
        assert reader.read() == b""
    assert status == 200 and headers["connection"] == "close" and headers["x-request-id"] == "second"
    stopping.result(10)


def test_a_request_asking_for_an_upgrade_is_read_with_its_body_and_served_over_http11(stack: Stack) -> None:
    """curl --http2 on http:// asks every request to upgrade to h2c: llhttp would take no body and hand the
    connection over; the gateway reads the request again without the upgrade."""
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(post("h2c", CHAT, b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                          b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA") + get("/healthz", "next"))
        answers = [read_answer(reader) for _ in range(2)]
    assert [(status, headers["x-request-id"]) for status, headers, _ in answers] == [(200, "h2c"), (200, "next")]
    assert orjson.loads(answers[0][2])["object"] == "chat.completion" and fake.chat_requests[0].body == CHAT


def test_a_refused_request_without_a_body_keeps_its_connection(stack: Stack) -> None:
    stack.gateway({"client_keys": ["team-key"], "controllers": [{"type": "mock"}]})
    with connect(stack) as sock, sock.makefile("rb") as reader:
        sock.sendall(get("/v1/models", "refused"))
        status, headers, _ = read_answer(reader)
        assert status == 401 and "connection" not in headers
        sock.sendall(get("/healthz", "again"))
        assert read_answer(reader)[:1] == (200,)


def test_the_memory_of_header_names_is_bounded() -> None:
    for number in range(connections.NAMES_KEPT + 10):
        assert connections._header_name(b"x-made-up-%d" % number) == f"X-Made-Up-{number}"
        assert len(connections._NAMES) <= connections.NAMES_KEPT
