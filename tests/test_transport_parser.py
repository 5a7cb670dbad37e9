"""The upstream transport against a raw-socket fake that sends exact bytes: one row per framing case."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Optional

import pytest

from chatgpt_apiserver.transport.reply import UpstreamError
from chatgpt_apiserver.transport.request import UpstreamRequest

from .harness import LoopThread
from .raw_upstream import CHAT, HELLO, RawUpstream, Script, answer, chunked, client_for, fetch, gzip_bomb, gzipped, head


@dataclass
class Case:
    """Bytes the upstream sends, and what the transport must make of them."""

    pieces: tuple[bytes, ...]
    body: Optional[bytes] = None  # the body read, when the answer is good
    status: int = 200
    reused: bool = True  # the connection carries the next request
    error: str = ""  # otherwise: a fragment of the UpstreamError's message
    kind: str = "protocol"
    close: bool = False  # the upstream closes the connection after sending
    pause: float = 0.0  # seconds between the pieces


# A body large enough to be read past the parser, straight into one buffer, once its first bytes are in.
LARGE = bytes(range(256)) * 4096 + b"the end"
LARGE_ANSWER = answer(LARGE)
LARGE_SPLIT = (LARGE_ANSWER[:2000], LARGE_ANSWER[2000:600_000], LARGE_ANSWER[600_000:])


def deflate(data: bytes, raw: bool = False) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


CASES: dict[str, Case] = {
    "content-length": Case((answer(HELLO),), HELLO),
    "content-length, split everywhere": Case(tuple(bytes([b]) for b in answer(HELLO)), HELLO),
    "chunked with extensions and trailers": Case((
        head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked", "Trailer: X-Checksum")
        + b"5;name=value\r\nhello\r\n7;a;b=\"quoted ; value\"\r\n, world\r\n0;last\r\nX-Checksum: abc\r\n"
          b"X-Other: 1\r\n\r\n",), HELLO),
    "chunked, one byte per read": Case(tuple(bytes([b]) for b in chunked(b"hello", b", world")), HELLO),
    "close-delimited": Case((head("HTTP/1.1 200 OK", "Content-Type: text/plain") + HELLO,), HELLO, reused=False,
                            close=True),
    "HTTP/1.0 without keep-alive": Case((head("HTTP/1.0 200 OK", f"Content-Length: {len(HELLO)}") + HELLO,), HELLO,
                                        reused=False, close=True),
    "Connection: close": Case((answer(HELLO, "Connection: close"),), HELLO, reused=False, close=True),
    "1xx before the answer": Case((head("HTTP/1.1 100 Continue"), head("HTTP/1.1 103 Early Hints", "Link: </x>"),
                                   answer(HELLO),), HELLO),
    "204": Case((head("HTTP/1.1 204 No Content"),), b"", status=204),
    "304": Case((head("HTTP/1.1 304 Not Modified", "ETag: x"),), b"", status=304),
    "an error status with a body": Case((answer(b'{"error":{}}', status="503 Service Unavailable"),), b'{"error":{}}',
                                        status=503),
    "gzip": Case((answer(gzipped(HELLO), "Content-Encoding: gzip"),), HELLO),
    "x-gzip": Case((answer(gzipped(HELLO), "Content-Encoding: x-gzip"),), HELLO),
    "gzip in two members": Case((answer(gzipped(b"hello, ") + gzipped(b"world"), "Content-Encoding: gzip"),), HELLO),
    "deflate (zlib-wrapped, as the standard says)": Case((answer(deflate(HELLO), "Content-Encoding: deflate"),),
                                                          HELLO),
    "deflate (raw, as some servers send it)": Case((answer(deflate(HELLO, raw=True), "Content-Encoding: deflate"),),
                                                    HELLO),
    "gzip, chunked": Case((chunked(gzipped(HELLO)[:9], gzipped(HELLO)[9:], head=("Content-Encoding: gzip",)),), HELLO),
    "Transfer-Encoding: gzip, chunked": Case((
        head("HTTP/1.1 200 OK", "Transfer-Encoding: gzip, chunked")
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(gzipped(HELLO)), gzipped(HELLO)),), HELLO),
    "gzip inside a gzip transfer coding": Case((
        head("HTTP/1.1 200 OK", "Content-Encoding: gzip", "Transfer-Encoding: gzip, chunked")
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(gzipped(gzipped(HELLO))), gzipped(gzipped(HELLO))),), HELLO),
    "identity content coding": Case((answer(HELLO, "Content-Encoding: identity"),), HELLO),
    "duplicate headers are joined": Case((answer(HELLO, "X-A: 1", "X-A: 2"),), HELLO),
    "bytes after the answer": Case((answer(HELLO) + b"HTTP/1.1 200 OK\r\n",), HELLO, reused=False),
    # What must fail, at once and as a protocol error.
    "folded header": Case((head("HTTP/1.1 200 OK", "X-Folded: one", " two", f"Content-Length: {len(HELLO)}") + HELLO,),
                          error="malformed HTTP response"),
    "chunk size 0x1a": Case((head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked") + b"0x1a\r\n",),
                            error="chunk size"),
    "chunk size +1a": Case((head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked") + b"+1a\r\n",), error="chunk size"),
    "chunk size -1": Case((head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked") + b"-1\r\n",), error="chunk size"),
    "chunk size overflowing 64 bits": Case((head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked")
                                            + b"fffffffffffffffff\r\n",), error="malformed HTTP response"),
    "negative Content-Length": Case((head("HTTP/1.1 200 OK", "Content-Length: -5"),), error="Content-Length"),
    "hex Content-Length": Case((head("HTTP/1.1 200 OK", "Content-Length: 1a"),), error="Content-Length"),
    "two different Content-Lengths": Case((head("HTTP/1.1 200 OK", "Content-Length: 2", "Content-Length: 3") + b"hi",),
                                          error="Content-Length"),
    "Content-Length with chunked": Case((head("HTTP/1.1 200 OK", "Content-Length: 2", "Transfer-Encoding: chunked")
                                         + b"2\r\nhi\r\n0\r\n\r\n",), error="malformed HTTP response"),
    "bare LF line ends": Case((b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",), error="malformed HTTP response"),
    "not HTTP": Case((b"SSH-2.0-OpenSSH_9.6\r\n",), error="malformed HTTP response"),
    "a protocol switch nobody asked for": Case((head("HTTP/1.1 101 Switching Protocols", "Upgrade: h2c",
                                                     "Connection: Upgrade"),), error="protocol switch"),
    "an unsupported coding": Case((answer(HELLO, "Content-Encoding: br"),), error="unsupported coding (br)"),
    "corrupt gzip": Case((answer(b"\x1f\x8b\x08\x00garbage-garbage", "Content-Encoding: gzip"),),
                         error="corrupt gzip body"),
    "truncated gzip": Case((answer(gzipped(HELLO * 50)[:-12], "Content-Encoding: gzip"),),
                           error="gzip body ended before its end"),
    "a head over 64 KiB": Case((head("HTTP/1.1 200 OK", *[f"X-Filler-{i}: {'x' * 1000}" for i in range(70)]),),
                               error="response head ran over"),
    "trailers over 64 KiB": Case((head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked") + b"2\r\nhi\r\n0\r\n"
                                  + b"".join(b"X-T-%d: %s\r\n" % (i, b"y" * 1000) for i in range(70)) + b"\r\n",),
                                 error="trailers ran over"),
    "closed before the head ends": Case((b"HTTP/1.1 200 OK\r\nContent-Le",), error="closed the connection while "
                                        "answering", kind="connection", close=True),
    "closed inside a Content-Length body": Case((head("HTTP/1.1 200 OK", "Content-Length: 100") + b"short",),
                                                error="while sending the body", kind="connection", close=True),
    "a large Content-Length body, in three reads": Case(LARGE_SPLIT, LARGE, pause=0.05),
    "a large body, then bytes after it": Case((*LARGE_SPLIT[:2], LARGE_SPLIT[2] + b"HTTP/1.1 200 OK\r\n"), LARGE,
                                              reused=False, pause=0.05),
    "closed inside a large Content-Length body": Case(LARGE_SPLIT[:2], error="while sending the body",
                                                      kind="connection", close=True, pause=0.05),
    "closed inside a chunked body": Case((head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked") + b"5\r\nhel",),
                                         error="while sending the body", kind="connection", close=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_framing(name: str, raw: RawUpstream, loop_thread: LoopThread) -> None:
    case = CASES[name]
    raw.cue(Script(case.pieces, pause=case.pause, close=case.close))
    client = client_for(raw)
    started = time.monotonic()
    try:
        if case.error:
            with pytest.raises(UpstreamError) as caught:
                loop_thread.run(fetch(client))
            assert case.error in caught.value.message and caught.value.kind == case.kind
            assert time.monotonic() - started < 5  # at once, never after the 30 s idle timeout
            return
        status, headers, body = loop_thread.run(fetch(client))
        assert (status, body) == (case.status, case.body)
        assert "link" not in headers and "x-checksum" not in headers  # interim answers and trailers stay out
        if name == "duplicate headers are joined":
            assert headers["x-a"] == "1, 2"
        status, _, body = loop_thread.run(fetch(client))  # the next request: the default answer
        assert status == 200 and body.startswith(b'{"id":"chatcmpl-fake"')
        assert (raw.requests[1].connection == raw.requests[0].connection) is case.reused
    finally:
        loop_thread.call(client.close)


def test_a_gzip_bomb_is_stopped_at_the_limit_without_inflating_it(raw: RawUpstream, loop_thread: LoopThread) -> None:
    import tracemalloc

    bomb = gzip_bomb(256 * 1024 * 1024)  # 256 MiB of zeros in ~250 KB
    assert len(bomb) < 400_000
    raw.cue(Script((answer(bomb, "Content-Encoding: gzip"),)))
    client = client_for(raw, max_body_size=4 * 1024 * 1024)
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            loop_thread.run(fetch(client))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        loop_thread.call(client.close)
    assert caught.value.kind == "protocol"
    assert "inflates past max_upstream_body_size (4194304 bytes)" in caught.value.message
    assert peak < 16 * 1024 * 1024  # the limit, some pieces and the bomb itself: never the 256 MiB
    assert time.monotonic() - started < 10


def test_a_body_over_the_limit_fails_before_it_is_read(raw: RawUpstream, loop_thread: LoopThread) -> None:
    raw.cue(Script((head("HTTP/1.1 200 OK", "Content-Length: 999999999999") + b"x" * 1000,), hang=True),
            Script((chunked(b"x" * 3000, b"y" * 3000),)))
    client = client_for(raw, max_body_size=5000)
    try:
        with pytest.raises(UpstreamError) as caught:
            loop_thread.run(fetch(client))
        assert "is 999999999999 bytes, over max_upstream_body_size (5000)" in caught.value.message
        with pytest.raises(UpstreamError) as caught:  # no Content-Length: counted as it arrives
            loop_thread.run(fetch(client))
        assert "runs past max_upstream_body_size (5000 bytes)" in caught.value.message
    finally:
        loop_thread.call(client.close)
    assert raw.requests[0].connection != raw.requests[1].connection  # a half-read answer is not reused


def test_a_large_body_that_stops_coming_times_out_and_its_connection_is_dropped(raw: RawUpstream,
                                                                              loop_thread: LoopThread) -> None:
    raw.cue(Script(LARGE_SPLIT[:2], pause=0.05, hang=True))
    client = client_for(raw, idle_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            loop_thread.run(fetch(client))
        assert caught.value.kind == "timeout" and 0.3 <= time.monotonic() - started < 5
        status, _, body = loop_thread.run(fetch(client))
        assert status == 200 and body.startswith(b'{"id":"chatcmpl-fake"')
    finally:
        loop_thread.call(client.close)
    assert raw.requests[0].connection != raw.requests[1].connection


def test_read_chunk_hands_out_a_large_inflated_answer_in_bounded_pieces(raw: RawUpstream,
                                                                        loop_thread: LoopThread) -> None:
    bomb = gzip_bomb(32 * 1024 * 1024)
    raw.cue(Script((answer(bomb, "Content-Encoding: gzip"),)))
    client = client_for(raw)

    async def pieces() -> tuple[int, int]:
        reply = await client.request(CHAT)
        largest = total = 0
        try:
            while piece := await reply.read_chunk():
                largest, total = max(largest, len(piece)), total + len(piece)
        finally:
            reply.close()
        return largest, total

    try:
        largest, total = loop_thread.run(pieces())
    finally:
        loop_thread.call(client.close)
    assert total == 32 * 1024 * 1024 and largest <= 256 * 1024


def test_the_request_bytes(raw: RawUpstream, loop_thread: LoopThread) -> None:
    client = client_for(raw)
    try:
        loop_thread.run(fetch(client, UpstreamRequest("POST", "/chat/completions", b'{"a":1}', (
            ("Content-Type", "application/json"),), request_id="req-1")))
        loop_thread.run(fetch(client, UpstreamRequest("GET", "/models", stream=True)))
        loop_thread.run(fetch(client, UpstreamRequest("DELETE", "/files/file-1")))
    finally:
        loop_thread.call(client.close)
    post, get, delete = raw.requests
    assert post.request_line == "POST /v1/chat/completions HTTP/1.1"
    assert post.headers == {"host": f"127.0.0.1:{raw.port}", "authorization": "Bearer sk-raw",
                            "accept-encoding": "gzip, deflate", "connection": "keep-alive", "x-request-id": "req-1",
                            "content-type": "application/json", "content-length": "7"}
    assert post.body == b'{"a":1}'
    assert get.request_line == "GET /v1/models HTTP/1.1" and "content-length" not in get.headers
    assert get.headers["accept-encoding"] == "identity"  # a stream is asked for uncompressed
    assert delete.request_line == "DELETE /v1/files/file-1 HTTP/1.1" and "content-length" not in delete.headers


def test_the_base_url_query_is_kept_on_every_request(raw: RawUpstream, loop_thread: LoopThread) -> None:
    client = client_for(raw, base_url=f"http://127.0.0.1:{raw.port}/openai/deployments/d1/?api-version=2024-06-01")
    try:
        loop_thread.run(fetch(client))
        loop_thread.run(fetch(client, UpstreamRequest("GET", "/files?purpose=batch&limit=2")))
    finally:
        loop_thread.call(client.close)
    assert [r.target for r in raw.requests] == [
        "/openai/deployments/d1/chat/completions?api-version=2024-06-01",
        "/openai/deployments/d1/files?api-version=2024-06-01&purpose=batch&limit=2"]


@pytest.mark.parametrize("headers", [(("Content-Length", "1"),), (("Host", "evil"),), (("X-A", "1\r\nX-B: 2"),),
                                     (("Bad Name", "1"),)])
def test_headers_that_would_break_the_framing_are_refused(raw: RawUpstream, headers: tuple[tuple[str, str], ...],
                                                          loop_thread: LoopThread) -> None:
    client = client_for(raw)
    try:
        with pytest.raises(ValueError, match="header"):
            client.encode(UpstreamRequest("POST", "/chat/completions", b"{}", headers))
        with pytest.raises(ValueError, match="not a request path"):
            client.encode(UpstreamRequest("GET", "/files x"))
        with pytest.raises(ValueError, match="does not send HEAD"):
            client.encode(UpstreamRequest("HEAD", "/files"))
    finally:
        loop_thread.call(client.close)
    assert not raw.requests
