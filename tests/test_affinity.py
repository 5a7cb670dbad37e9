"""The owners of stored responses and conversations: bounded in memory, shared through Redis."""

from __future__ import annotations

import asyncio

from chatgpt_apiserver.state.affinity import Affinity, LocalAffinity
from chatgpt_apiserver.state.redis_link import RedisLink

from .redis_server import RedisServer


def test_the_memory_map_is_bounded_and_drops_the_least_recently_used() -> None:
    owners = LocalAffinity(max_entries=100)
    for index in range(100):
        owners.remember(f"resp_{index:03d}", "a")
    assert len(owners) <= 100
    assert owners.owner("resp_099") == "a"  # recent
    for index in range(50):
        owners.owner("resp_060")  # used again and again: kept
        owners.remember(f"resp_new_{index}", "b")
    assert len(owners) <= 100
    assert owners.owner("resp_060") == "a"
    assert owners.owner("resp_000") is None  # the oldest, never used again, went first
    for index in range(10_000):
        owners.remember(f"conv_{index}", "c")
    assert len(owners) <= 100


def test_forget_and_resize() -> None:
    owners = LocalAffinity(max_entries=1000)
    owners.remember("resp_1", "a")
    owners.forget("resp_1")
    assert owners.owner("resp_1") is None
    for index in range(900):
        owners.remember(f"resp_{index}", "a")
    owners.resize(100)
    assert len(owners) <= 500  # the older generation went at once; the rest ages out as new ids come
    for index in range(200):
        owners.remember(f"more_{index}", "b")
    assert len(owners) <= 100


def test_redis_shares_owners_between_instances_and_restarts(redis_server: RedisServer) -> None:
    async def run() -> tuple[object, object, object]:
        links = [RedisLink(redis_server.url, "aff", 1.0) for _ in range(2)]
        for link in links:
            await link.start()
        first, second = Affinity(1000, 3600, links[0]), Affinity(1000, 3600, links[1])
        try:
            first.remember("resp_abc", "east")
            await asyncio.sleep(0.05)
            ttl = int(redis_server.command("TTL", "aff:aff:resp_abc")[1:].split(b"\r\n")[0])
            assert 3590 <= ttl <= 3600
            learned = await second.owner("resp_abc")
            missing = await second.owner("resp_nobody")
            first.forget("resp_abc")
            await asyncio.sleep(0.05)
            after_restart = await Affinity(1000, 3600, links[1]).owner("resp_abc")
        finally:
            for link in links:
                await link.close()
        return learned, missing, after_restart

    learned, missing, after_restart = asyncio.run(run())
    assert learned == "east" and missing is None and after_restart is None
    assert redis_server.command("TTL", "aff:aff:resp_abc").startswith(b":-2")  # deleted
