"""A request is admitted on its headers: method, key, declared size and room, before a byte of its body is read."""

from __future__ import annotations

import contextlib
import gzip
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from .fake_upstream import Cue
from .harness import Stack, openai_controller, raw_exchange
from .test_process import clean_env, free_port, wait_for_port

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
BIG = 30_000_000  # the figure: twelve of these grew the gateway by 470 MB


def head(path: str, length: int, *extra: str, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Content-Type: application/json", f"Content-Length: {length}",
             *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer_to_head_alone(port: int, data: bytes) -> bytes:
    """Send a request head whose body never follows, and read what comes back before the server hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):  # a socket timeout here means the server waited for the body
            received += chunk
        return received


@pytest.mark.parametrize(("method", "path", "extra", "status"), [
    ("POST", "/v1/chat/completions", (), 401),
    ("POST", "/v1/chat/completions", ("Authorization: Bearer wrong",), 401),
    ("POST", "/v1/chat/completions", ("Expect: 100-continue",), 401),
    ("GET", "/admin/controllers", ("Authorization: Bearer team-key",), 401),  # a client key is not the admin key
    ("POST", "/v1/models", ("Authorization: Bearer team-key",), 405),
    ("POST", "/nowhere", (), 404),
    ("POST", "/v1/chat/completions", ("Authorization: Bearer team-key", "Content-Length: 5"), 400),
])
def test_a_refusal_comes_on_the_headers_alone(stack: Stack, method: str, path: str, extra: tuple[str, ...],
                                              status: int) -> None:
    stack.gateway({"client_keys": ["team-key"], "admin_key": "admin-key", "controllers": [{"type": "mock"}]})
    received = answer_to_head_alone(stack.port, head(path, BIG, *extra, method=method))
    assert received.startswith(b"HTTP/1.1 %d " % status), received[:200]
    assert b"100 (Continue)" not in received and b"\r\nConnection: close\r\n" in received
    _head, _, body = received.partition(b"\r\n\r\n")
    assert orjson.loads(body)["error"]["message"]


def test_unauthenticated_bodies_stay_out_of_memory(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_bytes(orjson.dumps({"client_keys": ["team-key"], "controllers": [{"type": "mock"}]}))
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "chatgpt_apiserver", "--config-file", str(config),
                                "--port", str(port)], env=clean_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        small = orjson.dumps(BODY)  # warm up: one request answered (and refused) on every path
        assert raw_exchange(port, head("/v1/chat/completions", len(small)) + small)[0] == 401
        before = peak_rss(process.pid)
        chunk = b"x" * (1 << 20)

        def post() -> None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head("/v1/chat/completions", BIG))
                for _ in range(BIG // len(chunk)):
                    sock.sendall(chunk)
                while sock.recv(65536):
                    pass

        clients = [threading.Thread(target=post) for _ in range(12)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(60)
        grown = peak_rss(process.pid) - before
        assert process.poll() is None
        assert grown < 64 << 20, f"the gateway grew by {grown >> 20} MiB"  # 12 x 30 MB were offered
    finally:
        process.terminate()
        process.wait(30)


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def test_body_bytes_held_at_once_are_bounded(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]}, "--max-buffered-body-bytes", "10000")
    body = orjson.dumps({**BODY, "messages": [{"role": "user", "content": "x" * 7900}]})
    holder = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
    holder.sendall(head("/v1/chat/completions", len(body)) + body[:100])  # 8 KB reserved, the rest to come
    time.sleep(0.2)
    status, headers, answer = raw_exchange(stack.port, head("/v1/chat/completions", 5000) + b"{")
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert orjson.loads(answer)["error"]["code"] == "overloaded"
    chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"800\r\n" + b"y" * 0x800 + b"\r\n" + b"800\r\n" + b"y" * 0x800 + b"\r\n0\r\n\r\n")
    status, _, answer = raw_exchange(stack.port, chunked)  # a chunked body is counted as it comes
    assert status == 503 and orjson.loads(answer)["error"]["code"] == "overloaded"
    holder.sendall(body[100:])
    assert holder.recv(65536).startswith(b"HTTP/1.1 200 ")
    holder.close()
    small = orjson.dumps(BODY)  # the held bytes were given back
    assert raw_exchange(stack.port, head("/v1/chat/completions", len(small)) + small)[0] == 200
    assert len(fake.chat_requests) == 2
    assert orjson.loads(stack.request("GET", "/admin/controllers")[2])["body_bytes_held"] == 0
    # A body larger than all that may be held at once could never be taken: 413, not a 503 to retry forever.
    status, headers, answer = raw_exchange(stack.port, head("/v1/chat/completions", 12000) + b"{")
    assert status == 413 and "retry-after" not in headers and "10000" in orjson.loads(answer)["error"]["message"]
    huge = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"1000\r\n" + b"z" * 0x1000 + b"\r\n") * 3 + b"0\r\n\r\n")
    assert raw_exchange(stack.port, huge)[0] == 413


def test_bodies_reach_the_upstream_byte_for_byte(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    body = ('{ "model" : "gpt-4o",\n "messages": [{"role":"user","content":"h\\u00e9 é \\"q\\""}] ,'
            ' "temperature": 1.0e0, "x": [ ] }').encode() + b" " * 70_000  # several reads' worth
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(head("/v1/chat/completions", len(body)))
        for start in range(0, len(body), 9000):  # in pieces, with pauses between them
            sock.sendall(body[start:start + 9000])
            time.sleep(0.01)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    pieces = [body[start:start + 7] for start in range(0, 196, 7)] + [body[196:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    status, _, _answer = raw_exchange(stack.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                                  b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert status == 200
    assert [seen.body for seen in fake.chat_requests] == [body, body]


@pytest.mark.parametrize("head", [
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",  # which one frames the body?
    b"Content-Length: 5x\r\n\r\n",
    b"Content-Length: 5\r\nContent-Length: 7\r\n\r\n",
    b"A header line without a colon\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is no number
])
def test_a_request_that_is_not_valid_http_gets_a_400_in_openais_shape(stack: Stack, head: bytes) -> None:
    stack.gateway({"controllers": [{"type": "mock"}]})
    status, headers, answer = raw_exchange(stack.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + head)
    assert status == 400 and headers["connection"] == "close" and headers["content-type"] == "application/json"
    error = orjson.loads(answer)["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["code"] == "malformed_http_request"  # llhttp frames every request, a bad length included
    assert raw_exchange(stack.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


@pytest.mark.parametrize(("limit", "size"), [(65536, 70_000), (4096, 5_000), (4096, 1_000_000)])
def test_an_oversized_head_gets_431(stack: Stack, limit: int, size: int) -> None:
    flags = () if limit == 65536 else ("--max-header-size", str(limit))  # 64 KiB by default
    stack.gateway({"controllers": [{"type": "mock"}]}, *flags)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * size + b"\r\n\r\n"
    status, headers, answer = raw_exchange(stack.port, request)
    assert status == 431 and headers["connection"] == "close"
    assert orjson.loads(answer)["error"] == {
        "message": f"The request head (request line and headers) is over the limit of {limit} bytes.",
        "type": "invalid_request_error", "param": None, "code": "request_header_fields_too_large"}
    assert raw_exchange(stack.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * (limit - 200)
                        + b"\r\n\r\n")[0] == 200  # under the limit


def test_an_http10_keep_alive_client_gets_a_stream_that_ends_where_the_connection_closes(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})

    def exchange(sock: socket.socket, payload: dict[str, object]) -> bytes:
        data = orjson.dumps(payload)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
        return sock.recv(65536)

    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        whole = exchange(sock, BODY)  # a whole answer has a Content-Length: the connection stays open
        assert b"Content-Length:" in whole and b"Keep-Alive" in whole
        fake.default = Cue(mode="stream", events=3, interval=0.05)  # events as they come: no length known
        received = exchange(sock, {**BODY, "stream": True})
        deadline = time.monotonic() + 10
        while (chunk := sock.recv(65536)) and time.monotonic() < deadline:
            received += chunk  # until the gateway closes: that is where the answer ends
    head, _, rest = received.partition(b"\r\n\r\n")
    assert b"Keep-Alive" not in head and b"Content-Length" not in head and b"Transfer-Encoding" not in head, head
    assert rest.rstrip().endswith(b"data: [DONE]") and not chunk


def test_an_http10_keep_alive_connection_the_gateway_closes_is_not_told_keep_alive(stack: Stack) -> None:
    stack.gateway({"controllers": [openai_controller(stack.fake("up"))], "client_keys": ["team-key"]})
    data = orjson.dumps(BODY)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
        received = b""
        while chunk := sock.recv(65536):  # no key: refused on the headers, its body unread, then closed
            received += chunk
    head, _, _ = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401") and b"Keep-Alive" not in head and b"Connection: close" in head, head


def test_a_compressed_request_body_is_a_415_that_says_so(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    packed = gzip.compress(orjson.dumps(BODY))
    for coding in ("gzip", "br"):
        status, headers, answer = raw_exchange(stack.port, head("/v1/chat/completions", len(packed),
                                                                f"Content-Encoding: {coding}") + packed)
        error = orjson.loads(answer)["error"]
        assert status == 415 and error["code"] == "unsupported_content_encoding" and coding in error["message"]
        assert headers["accept-encoding"] == "identity"
    assert not fake.requests
    plain = orjson.dumps(BODY)
    identity = head("/v1/chat/completions", len(plain), "Content-Encoding: identity")
    assert raw_exchange(stack.port, identity + plain)[0] == 200


def test_a_request_target_in_absolute_form_is_served_like_its_path(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake)]})
    data = orjson.dumps(BODY)
    for target in (f"http://127.0.0.1:{stack.port}/v1/chat/completions", "HTTP://gateway/v1/chat/completions?x=1"):
        request = head(target, len(data)) + data
        status, _, answer = raw_exchange(stack.port, request)
        assert status == 200 and orjson.loads(answer)["object"] == "chat.completion", answer
    assert raw_exchange(stack.port, head("http://gateway", 0, method="GET"))[0] == 200  # "/": the status page
    assert len(fake.chat_requests) == 2


def test_an_unreadable_absolute_form_target_is_a_404_not_a_traceback(stack: Stack,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    stack.gateway({"controllers": [openai_controller(stack.fake("up"))]})
    for target in ("http://[foo]/v1/models", "http://[::1/v1/models"):
        status, _, answer = raw_exchange(stack.port, head(target, 0, method="GET"))
        assert status == 404 and orjson.loads(answer)["error"], answer
    assert "Traceback" not in caplog.text and "Uncaught exception" not in caplog.text
