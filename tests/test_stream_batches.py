"""Events that arrive in one upstream read leave in one write: one HTTP chunk to the client, however many."""

from __future__ import annotations

import re
import socket
import time

import openai
import orjson

from .fake_upstream import chunk as sse_event
from .harness import Stack, raw_controller
from .raw_upstream import SSE_HEAD, Script, chunk

STREAM = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
ROLE = sse_event("fake-model", {"role": "assistant", "content": ""})
DELTAS = [sse_event("fake-model", {"content": f"w{i} "}) for i in range(5)]
USAGE = sse_event("fake-model", {}, 0, usage={"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6})


def response_chunks(stack: Stack) -> list[bytes]:
    """The chunks of the gateway's chunked answer to a streaming request, as they were framed (one for an
    answer sent whole, with a Content-Length)."""
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    data = orjson.dumps(STREAM)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    head, body = raw.split(b"\r\n\r\n", 1)
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    if length:  # a whole stream in hand at once goes in one write
        while len(body) < int(length.group(1)):
            body += sock.recv(65536)
        sock.close()
        return [body]
    while not body.endswith(b"\r\n0\r\n\r\n"):
        received = sock.recv(65536)
        assert received
        body += received
    sock.close()
    chunks = []
    while True:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if not size:
            return chunks
        chunks.append(body[:size])
        body = body[size + 2:]


def test_the_events_of_one_read_leave_in_one_write(stack: Stack) -> None:
    raw = stack.raw()
    rest = b"".join(chunk(event) for event in [*DELTAS, USAGE, b"data: [DONE]\n\n"])  # a chunk each, one write
    raw.default = Script((SSE_HEAD + chunk(ROLE), rest + b"0\r\n\r\n"), pause=0.2)
    stack.gateway({"controllers": [raw_controller(raw)]})
    chunks = response_chunks(stack)
    # The role event alone, then the five deltas and [DONE] together (the usage event was the gateway's to ask).
    assert chunks == [ROLE, b"".join(DELTAS) + b"data: [DONE]\n\n"]


def test_events_read_before_a_bad_one_leave_with_the_error_event(stack: Stack) -> None:
    raw = stack.raw()
    rest = DELTAS[0] + DELTAS[1] + b"data: {not json\n\n" + DELTAS[2]
    raw.default = Script((SSE_HEAD + chunk(ROLE), chunk(rest)), pause=0.2, hang=True)
    stack.gateway({"controllers": [raw_controller(raw)]})
    chunks = response_chunks(stack)
    assert len(chunks) == 2 and chunks[1].startswith(DELTAS[0] + DELTAS[1] + b'data: {"error"')
    assert b"not valid JSON" in chunks[1] and DELTAS[2] not in chunks[1]


def test_a_stream_whose_end_comes_after_done_keeps_its_connection(stack: Stack) -> None:
    # Servers often send [DONE], then the chunked end a moment later: the connection is still worth keeping.
    raw = stack.raw()
    raw.default = Script((SSE_HEAD + chunk(ROLE) + chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"), pause=0.3)
    stack.gateway({"controllers": [raw_controller(raw)]})
    for _ in range(3):
        assert response_chunks(stack)[-1].endswith(b"data: [DONE]\n\n")
        time.sleep(0.6)  # the end arrives meanwhile
    assert {request.connection for request in raw.requests} == {1}


def test_a_stream_whose_end_never_comes_after_done_loses_its_connection(stack: Stack) -> None:
    raw = stack.raw()
    raw.default = Script((SSE_HEAD + chunk(ROLE) + chunk(b"data: [DONE]\n\n"),), hang=True)
    stack.gateway({"controllers": [raw_controller(raw)]})
    started = time.monotonic()
    assert response_chunks(stack)[-1].endswith(b"data: [DONE]\n\n")  # the client does not wait for it
    assert time.monotonic() - started < 1
    while raw.closed_by_peer == 0 and time.monotonic() - started < 5:
        time.sleep(0.02)
    assert raw.closed_by_peer == 1 and 0.8 < time.monotonic() - started < 4  # given a second, then closed
    assert response_chunks(stack)[-1].endswith(b"data: [DONE]\n\n")
    assert [request.connection for request in raw.requests] == [1, 2]


def test_a_stream_that_goes_on_after_done_loses_its_connection(stack: Stack) -> None:
    raw = stack.raw()
    after = chunk(b": " + b"z" * 100_000 + b"\n\n") + b"0\r\n\r\n"  # more than is worth reading to keep it
    raw.default = Script((SSE_HEAD + chunk(ROLE) + chunk(b"data: [DONE]\n\n"), after), pause=0.1)
    stack.gateway({"controllers": [raw_controller(raw)]})
    assert response_chunks(stack)[-1].endswith(b"data: [DONE]\n\n")
    time.sleep(0.5)
    assert response_chunks(stack)[-1].endswith(b"data: [DONE]\n\n")
    assert [request.connection for request in raw.requests] == [1, 2] and raw.closed_by_peer >= 1


def test_a_stream_that_arrives_whole_leaves_in_one_write(stack: Stack) -> None:
    raw = stack.raw()
    raw.default = Script((SSE_HEAD + chunk(ROLE) + b"".join(chunk(e) for e in DELTAS) + chunk(b"data: [DONE]\n\n")
                          + b"0\r\n\r\n",))
    stack.gateway({"controllers": [raw_controller(raw)]})
    assert response_chunks(stack) == [ROLE + b"".join(DELTAS) + b"data: [DONE]\n\n"]  # framed by Content-Length
    client = openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0)
    chunks = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "w0 w1 w2 w3 w4 "
