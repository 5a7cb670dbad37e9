"""The keep-alive pool: reuse, the idle-timeout race, the reaper, waiting for a connection, timeouts, and
closed connections freed by reference counting."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import weakref
from collections.abc import Iterator

import pytest

from chatgpt_apiserver.transport import pool as pool_module
from chatgpt_apiserver.transport.client import Transport
from chatgpt_apiserver.transport.connection import Connection
from chatgpt_apiserver.transport.http1 import Http1Client
from chatgpt_apiserver.transport.reply import UpstreamError

from .fake_proxy import FakeProxy
from .fake_upstream import FakeUpstream
from .harness import LoopThread, Stack
from .raw_upstream import CHAT, HELLO, OK, SSE_HEAD, RawUpstream, Script, answer, chunk, client_for, fetch, head, sse

CLOSE_AT_REQUEST = Script((), close=True)  # the upstream closes the connection as the request arrives


def connections(raw: RawUpstream) -> list[int]:
    return [request.connection for request in raw.requests]


def test_a_reused_connection_closed_as_the_request_arrives_is_sent_again_on_a_fresh_one(
        raw: RawUpstream, loop_thread: LoopThread) -> None:
    raw.cue(OK, CLOSE_AT_REQUEST)
    client = client_for(raw)
    try:
        assert loop_thread.run(fetch(client))[0] == 200
        assert loop_thread.run(fetch(client))[0] == 200
    finally:
        loop_thread.call(client.close)
    assert connections(raw) == [1, 1, 2]


def test_the_second_try_is_the_last(raw: RawUpstream, loop_thread: LoopThread) -> None:
    raw.cue(OK, CLOSE_AT_REQUEST, CLOSE_AT_REQUEST)
    client = client_for(raw)
    try:
        loop_thread.run(fetch(client))
        with pytest.raises(UpstreamError, match="closed the connection while answering") as caught:
            loop_thread.run(fetch(client))
    finally:
        loop_thread.call(client.close)
    assert caught.value.kind == "connection"
    assert connections(raw) == [1, 1, 2]


def test_a_fresh_connection_closed_before_answering_is_not_retried(raw: RawUpstream, loop_thread: LoopThread) -> None:
    raw.cue(CLOSE_AT_REQUEST)
    client = client_for(raw)
    try:
        with pytest.raises(UpstreamError, match="closed the connection while answering"):
            loop_thread.run(fetch(client))
    finally:
        loop_thread.call(client.close)
    assert connections(raw) == [1]


def test_an_answer_that_had_begun_is_not_sent_again(raw: RawUpstream, loop_thread: LoopThread) -> None:
    raw.cue(OK, Script((b"HTTP/1.1 200 OK\r\n",), close=True))
    client = client_for(raw)
    try:
        loop_thread.run(fetch(client))
        with pytest.raises(UpstreamError, match="closed the connection while answering"):
            loop_thread.run(fetch(client))
    finally:
        loop_thread.call(client.close)
    assert connections(raw) == [1, 1]


def test_the_reaper_closes_connections_idle_past_the_keepalive_timeout(raw: RawUpstream,
                                                                       loop_thread: LoopThread) -> None:
    raw.cue(Script((answer(HELLO),), pause=0.0))
    client = client_for(raw, keepalive_timeout=0.3)

    async def hold_a_reply_past_the_timeout() -> bytes:
        reply = await client.request(CHAT)
        await asyncio.sleep(0.6)  # in use, not idle: the reaper leaves it alone
        return await reply.read()

    try:
        assert loop_thread.run(hold_a_reply_past_the_timeout()) == HELLO
        started = time.monotonic()
        while raw.closed_by_peer == 0 and time.monotonic() - started < 5:
            time.sleep(0.02)
        took = time.monotonic() - started
        assert raw.closed_by_peer == 1 and 0.2 < took < 2.0  # closed by the reaper, with no request to prompt it
        assert client.pool.open == 0 and not client.pool.idle
        assert loop_thread.run(fetch(client))[0] == 200  # and the next request opens a new one
    finally:
        loop_thread.call(client.close)
    assert connections(raw) == [1, 2]


def test_bytes_on_an_idle_connection_retire_it(raw: RawUpstream, loop_thread: LoopThread) -> None:
    # Some servers say 408 on an idle connection before they close it.
    raw.cue(Script((answer(HELLO), b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"), pause=0.1))
    client = client_for(raw)
    try:
        assert loop_thread.run(fetch(client))[2] == HELLO
        time.sleep(0.4)
        assert loop_thread.run(fetch(client))[0] == 200
    finally:
        loop_thread.call(client.close)
    assert connections(raw) == [1, 2]


def test_a_waiter_cancelled_after_its_wake_up_passes_the_connection_on(raw: RawUpstream,
                                                                       loop_thread: LoopThread) -> None:
    client = client_for(raw, max_connections=1)

    async def scenario() -> int:
        first = await client.request(CHAT)  # the only connection is busy
        a = asyncio.ensure_future(client.request(CHAT))
        b = asyncio.ensure_future(client.request(CHAT))
        await asyncio.sleep(0.1)
        assert not a.done() and not b.done()  # both wait for the connection
        await first.read()  # the connection returns to the pool and wakes a...
        a.cancel()  # ...which is cancelled before it could run
        second = await asyncio.wait_for(b, 3)  # b must not sleep on
        await second.read()
        return second.status

    try:
        assert loop_thread.run(scenario()) == 200
    finally:
        loop_thread.call(client.close)
    assert connections(raw) == [1, 1]


def test_a_body_that_stops_coming_times_out(raw: RawUpstream, loop_thread: LoopThread) -> None:
    raw.cue(Script((head("HTTP/1.1 200 OK", "Content-Length: 100") + b"partial",), hang=True))
    client = client_for(raw, idle_timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamError, match="timed out waiting for the upstream") as caught:
            loop_thread.run(fetch(client))
    finally:
        loop_thread.call(client.close)
    assert caught.value.kind == "timeout" and 0.25 < time.monotonic() - started < 3


def test_connection_refused(loop_thread: LoopThread) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once it closes
    client = Http1Client(f"http://127.0.0.1:{port}/v1", [], Transport())
    with pytest.raises(UpstreamError, match=r"cannot connect to the upstream \(Connection refused\)") as caught:
        loop_thread.run(fetch(client))
    assert caught.value.kind == "connection" and client.pool.open == 0


class TrackedConnections:
    """Weak references to every connection the pools open meanwhile."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref[Connection]] = []

    @property
    def alive(self) -> int:
        return sum(1 for ref in self.refs if ref() is not None)


@pytest.fixture
def tracked(monkeypatch: pytest.MonkeyPatch) -> Iterator[TrackedConnections]:
    """The connections opened during the test, with only reference counting to free them: the cyclic
    collector is off meanwhile (process-wide, so the loop thread's too)."""
    seen = TrackedConnections()

    class Tracked(Connection):
        def __init__(self, idle_timeout: float, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__(idle_timeout, loop)
            seen.refs.append(weakref.ref(self))

    monkeypatch.setattr(pool_module, "Connection", Tracked)
    gc.collect()
    gc.disable()
    try:
        yield seen
    finally:
        gc.enable()


# A closed connection still referred to from its parser's callbacks, its transport, its whole-body timer or its
# last error's traceback is a reference cycle: a burst of long streams left thousands of them in the collector's
# oldest generation, which CPython collects rarely.

def test_closed_connections_are_freed_without_the_cyclic_collector(
        raw: RawUpstream, loop_thread: LoopThread, tracked: TrackedConnections) -> None:
    raw.cue(OK, OK, CLOSE_AT_REQUEST, CLOSE_AT_REQUEST)
    client = client_for(raw, keepalive_timeout=0.2)

    async def scenario() -> list[object]:
        try:
            seen: list[object] = [(await fetch(client))[0]]
            while client.pool.open:
                await asyncio.sleep(0.02)  # the reaper closes it
            seen.append((await fetch(client))[0])
            try:
                await fetch(client)  # the upstream closes the connection (twice)
            except UpstreamError as error:
                seen.append(error.kind)
        finally:
            client.close()
        await asyncio.sleep(0.1)  # the closes reach connection_lost
        return seen

    assert loop_thread.run(asyncio.wait_for(scenario(), 10)) == [200, 200, "connection"]
    assert connections(raw) == [1, 2, 2, 3]
    assert len(tracked.refs) == 3 and tracked.alive == 0


def test_a_read_waiting_when_its_reply_is_closed_ends_at_once(raw: RawUpstream, loop_thread: LoopThread) -> None:
    # The pool drops a discarded connection's error, but not while a read still waits for it.
    raw.cue(Script((SSE_HEAD + chunk(sse(b"1")),), hang=True))
    client = client_for(raw, idle_timeout=5.0)

    async def scenario() -> tuple[str, float]:
        reply = await client.request(CHAT)
        await reply.read_chunk()
        reading = asyncio.ensure_future(reply.read_chunk())  # waits for the next event, which never comes
        await asyncio.sleep(0.05)
        started = time.monotonic()
        reply.close()  # another task gives the answer up
        try:
            await reading
        except UpstreamError as error:
            return error.kind, time.monotonic() - started
        finally:
            client.close()
        return "read", time.monotonic() - started

    kind, took = loop_thread.run(scenario())
    assert kind == "connection" and took < 2.5  # not the 5 s idle timeout


@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "proxy"])
def test_closed_tls_connections_are_freed_without_the_cyclic_collector(
        stack: Stack, tls_upstream: FakeUpstream, tracked: TrackedConnections, through_proxy: bool) -> None:
    # uvloop's TLS transport keeps its protocol after the close: the connection must let go of it.
    proxy = FakeProxy()
    stack.loop.run(proxy.start())
    client = Http1Client(f"https://127.0.0.1:{tls_upstream.port}/v1", [("Authorization", "Bearer sk-tls")],
                         Transport(), proxy_url=proxy.url if through_proxy else None)

    async def scenario() -> list[int]:
        try:
            return [(await fetch(client))[0] for _ in range(2)]
        finally:
            client.close()
            await asyncio.sleep(0.3)  # the TLS close reaches connection_lost

    try:
        assert stack.loop.run(scenario()) == [200, 200]
    finally:
        stack.loop.run(proxy.stop())
    assert [passed.method for passed in proxy.seen] == (["CONNECT"] if through_proxy else [])
    assert len(tracked.refs) == 1 and tracked.alive == 0
