"""Client limits and budgets across instances: two gateways sharing Redis enforce one limit, and a Redis outage
loses no spending."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from chatgpt_apiserver.server import Running, start_server

from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .redis_server import RedisServer
from .test_faults import wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
Api = Callable[..., openai.OpenAI]  # the `api` fixture


def test_two_instances_sharing_redis_enforce_one_clients_rpm_together(stack: Stack, api: Api,
                                                                      redis_server: RedisServer) -> None:
    fake = stack.fake()
    document = {"controllers": [openai_controller(fake)], "redis_url": redis_server.url,
                "clients": [{"name": "team", "key": "team-key", "rpm": 4}, {"name": "other", "key": "other-key"}]}
    stack.gateway(document)
    second: Running = stack.loop.run(start_server(stack.settings(document)))
    try:
        ports = [stack.port, second.port]
        outcomes: list[Any] = []
        for index in range(10):
            try:
                raw = api("team-key", ports[index % 2]).chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=MESSAGES)
                outcomes.append(raw.headers["x-ratelimit-remaining-requests"])
            except openai.RateLimitError as error:
                assert "4 requests per minute" in error.message
                outcomes.append(429)
        # Four in all, alternating between the instances, the count going down across both; then refusals.
        assert outcomes == ["3", "2", "1", "0", *[429] * 6]
        assert len(fake.chat_requests) == 4
        assert api("other-key", ports[1]).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        keys = redis_server.command("KEYS", "*")
        assert b"{client:team}:lim" in keys and b"team-key" not in keys
    finally:
        stack.loop.run(second.stop(grace=1.0))


@pytest.mark.parametrize("fallback", ["local", "refuse"])
def test_a_redis_outage_loses_no_spending(stack: Stack, api: Api, redis_server: RedisServer, fallback: str) -> None:
    fake = stack.fake()
    stack.gateway({"controllers": [openai_controller(fake)], "redis_url": redis_server.url,
                   "redis_timeout": 0.2, "redis_fallback": fallback, "admin_key": "admin-key",
                   "clients": [{"name": "team", "key": "team-key", "budget": {"tokens": 1000}}]})
    client = api("team-key")
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    redis_server.stop()
    time.sleep(0.3)
    outcomes = []
    for _ in range(3):
        try:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            outcomes.append(200)
        except openai.APIStatusError as error:
            outcomes.append(error.status_code)
    assert outcomes == ([200, 200, 200] if fallback == "local" else [503, 503, 503])
    redis_server.start()  # empty: it kept nothing
    assert stack.running is not None
    link = stack.running.gateway.store.redis.link  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while not link.available and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the spending settled meanwhile is sent with the first heartbeat back
    status, _headers, body = stack.request("GET", "/admin/clients/team", headers={"Authorization": "Bearer admin-key"})
    assert status == 200
    spent = orjson.loads(body)["budget"]["tokens"]["spent"]
    assert spent == (36 if fallback == "local" else 0)  # what the outage spent is in Redis now


def test_a_clients_slot_and_spending_from_an_outage_reach_redis_when_it_returns(stack: Stack, api: Api,
                                                                               redis_server: RedisServer) -> None:
    fake = stack.fake()
    hold = 8.0  # seconds the request admitted from the local fallback holds the client's only slot
    document = {"controllers": [openai_controller(fake)], "redis_url": redis_server.url, "redis_timeout": 0.2,
                "redis_fallback": "local", "admin_key": "admin-key",
                "clients": [{"name": "team", "key": "team-key", "max_concurrency": 1, "budget": {"tokens": 1000}}]}
    stack.gateway(document)
    second: Running = stack.loop.run(start_server(stack.settings(document)))
    try:
        links = [stack.running.gateway.store.redis.link, second.gateway.store.redis.link]  # type: ignore[union-attr]

        redis_server.stop()
        fake.cue(Cue(delay=hold))
        holder = threading.Thread(target=lambda: api("team-key").chat.completions.create(model="gpt-4o",
                                                                                          messages=MESSAGES))
        holder.start()
        assert wait_until(lambda: fake.chat_requests, 10), "the first instance never sent its request"
        assert not links[0].available  # so it was admitted from the local store
        redis_server.start()
        assert wait_until(lambda: all(link.available for link in links), 10), "Redis never came back"
        key = "chatgpt-apiserver:{client:team}:inflight"
        assert wait_until(lambda: redis_server.command("HGET", key, links[0].instance) == b"$1\r\n1\r\n", 3), \
            "the client's slot taken locally was not counted in Redis"
        assert time.monotonic() - fake.chat_requests[0].at < hold, "Redis came back too late for the test"
        with pytest.raises(openai.RateLimitError) as busy:  # the other instance sees the slot held
            api("team-key", second.port).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert "max_concurrency" in busy.value.message
        holder.join(30)
        assert wait_until(lambda: redis_server.command("HLEN", key) == b":0\r\n", 3), "the slot stayed held in Redis"
        assert api("team-key", second.port).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        status, _headers, body = stack.request("GET", "/admin/clients/team",
                                               headers={"Authorization": "Bearer admin-key"})
        assert status == 200 and orjson.loads(body)["budget"]["tokens"]["spent"] == 24  # both requests, in Redis
    finally:
        stack.loop.run(second.stop(grace=1.0))
