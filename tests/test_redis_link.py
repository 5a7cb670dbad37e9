"""The Redis link's hot path against a real redis-server that misbehaves: a reply later than the timeout, scripts
Redis forgot, and a connection lost with calls on it. Each call gets its own reply or a clear failure."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import pytest

from chatgpt_apiserver.state.redis_link import RedisLink
from chatgpt_apiserver.state.store import StoreUnavailable

from .redis_server import RedisServer


async def until_available(link: RedisLink, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not link.available:
        assert time.monotonic() < deadline, "the link did not come back"
        await asyncio.sleep(0.05)


def run(redis_server: RedisServer, timeout: float, scenario: Any) -> Any:
    async def main() -> Any:
        link = RedisLink(redis_server.url, "linktest", timeout)
        await link.start()
        try:
            result = await scenario(link)
            await asyncio.sleep(0.05)
            assert link._in_tasks == 0 and not link._background  # no batch left behind in a task
            return result
        finally:
            await link.close()

    return asyncio.run(main())


def test_a_reply_later_than_the_timeout_fails_its_call_and_later_calls_get_their_own(
        redis_server: RedisServer) -> None:
    async def scenario(link: RedisLink) -> tuple[Any, ...]:
        link.send("aff_set", (b"linktest:one",), (b"first", b"60"))
        link.send("aff_set", (b"linktest:two",), (b"second", b"60"))
        assert await link.call("aff_get", (b"linktest:one",), ()) == b"first"
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)  # Redis stops answering; its socket stays open
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable):
                await link.call("aff_get", (b"linktest:one",), ())
            failed_after = time.monotonic() - started
            down = not link.available
        finally:
            redis_server.process.send_signal(signal.SIGCONT)  # the late reply comes, for nobody
        await until_available(link)
        second = await link.call("aff_get", (b"linktest:two",), ())
        return failed_after, down, second

    failed_after, down, second = run(redis_server, 0.3, scenario)
    assert 0.25 < failed_after < 2.0 and down
    assert second == b"second"  # not the late "first" of the call that timed out


def test_scripts_redis_forgot_are_loaded_again_and_the_calls_answered(redis_server: RedisServer) -> None:
    async def scenario(link: RedisLink) -> tuple[Any, ...]:
        link.send("aff_set", (b"linktest:k",), (b"kept", b"60"))
        assert await link.call("aff_get", (b"linktest:k",), ()) == b"kept"
        assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
        replies = await asyncio.gather(link.call("aff_get", (b"linktest:k",), ()),
                                       link.call("aff_get", (b"linktest:missing",), ()))
        return (*replies, link.available)

    assert run(redis_server, 1.0, scenario) == (b"kept", None, True)


def test_a_connection_lost_with_calls_on_it_fails_them_at_once(redis_server: RedisServer) -> None:
    async def scenario(link: RedisLink) -> tuple[Any, ...]:
        assert await link.call("aff_get", (b"linktest:x",), ()) is None
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        pending = asyncio.ensure_future(link.call("aff_get", (b"linktest:x",), ()))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        redis_server.stop()  # killed while stopped: the kernel closes its connections
        with pytest.raises(StoreUnavailable):
            await pending
        failed_after = time.monotonic() - started
        redis_server.start()
        await until_available(link)
        link.send("aff_set", (b"linktest:x",), (b"back", b"60"))
        return failed_after, await link.call("aff_get", (b"linktest:x",), ())

    failed_after, after = run(redis_server, 5.0, scenario)
    assert failed_after < 2.0  # at once, not at the 5 s timeout
    assert after == b"back"  # a fresh connection carries the calls again


def test_calls_on_an_open_connection_go_out_without_a_task(redis_server: RedisServer) -> None:
    async def scenario(link: RedisLink) -> list[Any]:
        link.send("aff_set", (b"linktest:t",), (b"direct", b"60"))
        assert await link.call("aff_get", (b"linktest:t",), ()) == b"direct"  # (the connection is open now)
        calls = [asyncio.ensure_future(link.call("aff_get", (b"linktest:t",), ())) for _ in range(5)]
        await asyncio.sleep(0)  # the calls are queued, and flushed at the end of this turn
        await asyncio.sleep(0)
        assert not link._background and link._in_tasks == 0  # written from the flush itself
        return list(await asyncio.gather(*calls))

    assert run(redis_server, 1.0, scenario) == [b"direct"] * 5


def test_a_reply_handler_that_fails_is_logged_and_the_other_calls_answered(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    def broken(_reply: Any) -> None:
        raise RuntimeError("a bug in a reply handler")

    async def scenario(link: RedisLink) -> tuple[Any, ...]:
        assert await link.call("aff_get", (b"linktest:h",), ()) is None
        link.send("aff_get", (b"linktest:h",), (), broken)
        answer = await link.call("aff_get", (b"linktest:h",), ())  # in the same batch, after it
        return answer, link.available, await link.call("aff_get", (b"linktest:h",), ())

    caplog.set_level(logging.ERROR, "chatgpt_apiserver.state")
    assert run(redis_server, 1.0, scenario) == (None, True, None)
    assert [r.getMessage() for r in caplog.records] == ["handling a Redis reply failed"]
