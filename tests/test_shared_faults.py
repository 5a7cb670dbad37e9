"""What the first Redis state got wrong, and the breaker's scope: each test failed before the one store.

Instances are in-process gateways on the test loop (or a subprocess, where one must die), sharing a
private redis-server.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

import openai
import orjson

from chatgpt_apiserver.config.settings import Settings
from chatgpt_apiserver.server import Running, start_server

from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .redis_server import RedisServer
from .test_faults import wait_until
from .test_lifecycle import Server

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def post(port: int, body: dict[str, Any] = BODY, path: str = "/v1/chat/completions",
         timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("POST" if body else "GET", path, body=orjson.dumps(body) if body else None)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def admin(port: int) -> dict[str, Any]:
    status, _, body = post(port, {}, "/admin/controllers")
    assert status == 200
    return {c["name"]: c for c in orjson.loads(body)["controllers"]}


class Instances:
    """Extra in-process gateways next to the stack's own, stopped with the test."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.running: list[Running] = []

    def start(self, config: dict[str, Any], *args: str) -> Running:
        settings = self.stack.settings(config, *args)
        running = self.stack.loop.run(start_server(settings))
        self.running.append(running)
        return running

    def reload(self, running: Running, settings: Settings) -> None:
        self.stack.loop.run(running.gateway.reload(settings))

    def close(self) -> None:
        for running in self.running:
            self.stack.loop.run(running.stop(grace=1.0))


def shared_config(redis_server: RedisServer, controllers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"redis_url": redis_server.url, "controllers": controllers, **extra}


def test_a_dead_instance_frees_its_slots_within_the_heartbeat_ttl(stack: Stack, redis_server: RedisServer,
                                                                  tmp_path: Path) -> None:
    fake = stack.fake("one")
    fake.cue(Cue(mode="stall"))  # the victim's request holds the only slot until the victim dies
    config = shared_config(redis_server, [openai_controller(fake, max_concurrency=1)])
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    (victim_dir / "c.json").write_bytes(orjson.dumps(config))
    victim = Server(victim_dir / "c.json", "--max-queue-wait", "1")
    holder = threading.Thread(target=lambda: _swallow(lambda: post(victim.port, timeout=60)), daemon=True)
    holder.start()
    deadline = time.monotonic() + 10
    while not fake.chat_requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.chat_requests, "the victim never sent its request"
    stack.gateway(config, "--max-queue-wait", "0.5")
    assert post(stack.port)[0] == 429  # the slot is held by the other instance
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait(10)
    killed = time.monotonic()
    while True:
        status = post(stack.port)[0]
        if status == 200:
            break
        assert status == 429
        assert time.monotonic() - killed < 20, "the dead instance's slot was never freed"
        time.sleep(0.25)
    assert time.monotonic() - killed <= 20


def _swallow(call: Any) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):  # the instance was killed under it
        call()


def test_a_rotated_key_is_used_again_after_reload_on_every_instance(stack: Stack, redis_server: RedisServer) -> None:
    rotating, spare = stack.fake("rotating"), stack.fake("spare")
    old_key, new_key = "sk-old-" + "a" * 24, "sk-new-" + "b" * 24
    rotating.valid_keys = {new_key}

    def config(key: str) -> dict[str, Any]:
        return shared_config(redis_server, [openai_controller(rotating, weight=5, config={"api_key": key}),
                                            openai_controller(spare)])

    instances = Instances(stack)
    try:
        stack.gateway(config(old_key))
        other = instances.start(config(old_key))
        assert post(stack.port)[0] == 200  # rotating answered 401 and was disabled; spare served it
        time.sleep(0.2)
        served_by = [post(other.port)[1]["x-chatgpt-apiserver-controller"] for _ in range(4)]
        assert served_by == ["spare"] * 4  # the other instance learned the disable from Redis
        assert len(rotating.chat_requests) == 1
        rotated = stack.settings(config(new_key))
        stack.loop.run(stack.running.gateway.reload(rotated))  # type: ignore[union-attr]
        instances.reload(other, rotated)
        for port in (stack.port, other.port):
            served_by = [post(port)[1]["x-chatgpt-apiserver-controller"] for _ in range(6)]
            assert "rotating" in served_by, f"the rotated key is still treated as disabled on port {port}"
    finally:
        instances.close()


def test_waiting_is_first_in_first_out_with_redis(stack: Stack, redis_server: RedisServer) -> None:
    fake = stack.fake("one")
    fake.default = Cue(delay=0.06)
    stack.gateway(shared_config(redis_server, [openai_controller(fake, max_concurrency=1)]),
                  "--max-queue-wait", "20")
    threads = []
    for index in range(12):
        body = {**BODY, "user": f"n{index:02d}"}
        thread = threading.Thread(target=post, args=(stack.port, body))
        thread.start()
        threads.append(thread)
        time.sleep(0.04)
    for thread in threads:
        thread.join(30)
    order = [seen.json["user"] for seen in fake.chat_requests]
    assert order == [f"n{index:02d}" for index in range(12)]


def test_both_instances_show_the_shared_levels(stack: Stack, redis_server: RedisServer) -> None:
    fake = stack.fake("one")
    config = shared_config(redis_server, [openai_controller(fake, rpm=60)])
    instances = Instances(stack)
    try:
        stack.gateway(config)
        other = instances.start(config)
        for index in range(10):
            assert post(stack.port if index % 2 else other.port)[0] == 200
        for port in (stack.port, other.port):
            level = admin(port)["one"]["buckets"]["requests"]["level"]
            assert 49.5 <= level <= 51.5, level  # 60 - 10, plus what refilled meanwhile (1 a second)
    finally:
        instances.close()


def test_upstream_rate_limit_headers_correct_the_shared_buckets(stack: Stack, redis_server: RedisServer) -> None:
    fake = stack.fake("one")
    fake.default = Cue(headers={"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0"})
    config = shared_config(redis_server, [openai_controller(fake, rpm=600)])
    instances = Instances(stack)
    try:
        stack.gateway(config, "--max-queue-wait", "0.5")
        other = instances.start(config, "--max-queue-wait", "0.5")
        assert post(stack.port)[0] == 200
        time.sleep(0.2)  # the settle call is on its way to Redis
        bucket = admin(other.port)["one"]["buckets"]["requests"]
        assert bucket["capacity"] == 3 and bucket["level"] < 1
        status, headers, _ = post(other.port)
        assert status == 429 and int(headers["retry-after"]) >= 10  # 3 a minute: the next in ~20 s
        assert len(fake.chat_requests) == 1
    finally:
        instances.close()


def test_a_redis_flap_hands_out_no_fresh_burst(stack: Stack, redis_server: RedisServer) -> None:
    fake = stack.fake("one")
    stack.gateway(shared_config(redis_server, [openai_controller(fake, rpm=6)], redis_timeout=0.2),
                  "--max-queue-wait", "0.3")
    assert [post(stack.port)[0] for _ in range(6)] == [200] * 6
    assert post(stack.port)[0] == 429
    redis_server.stop()
    outage = [post(stack.port)[0] for _ in range(6)]
    assert outage.count(200) <= 1, outage  # the fallback carried the empty bucket over
    redis_server.start()
    deadline = time.monotonic() + 10
    while not stack.running.gateway.store.redis.available and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)
    time.sleep(0.2)
    back = [post(stack.port)[0] for _ in range(6)]
    assert back.count(200) <= 1, back  # the restarted, empty Redis was seeded with the low level
    assert len(fake.chat_requests) <= 8  # 6, plus at most one a 10 s refill allows on each side


def test_a_slot_taken_while_redis_was_away_is_held_there_when_it_returns(stack: Stack,
                                                                         redis_server: RedisServer) -> None:
    fake = stack.fake("one")
    hold = 8.0  # seconds the request taken from the local fallback holds the only slot at the upstream
    config = shared_config(redis_server, [openai_controller(fake, max_concurrency=1)], redis_timeout=0.2,
                           redis_fallback="local")
    instances = Instances(stack)
    try:
        stack.gateway(config, "--max-queue-wait", "30")
        other = instances.start(config, "--max-queue-wait", "30")
        stores = [stack.running.gateway.store, other.gateway.store]  # type: ignore[union-attr]
        key = "chatgpt-apiserver:{one}:inflight"

        redis_server.stop()
        fake.cue(Cue(delay=hold))
        holder = threading.Thread(target=lambda: post(stack.port))
        holder.start()
        assert wait_until(lambda: fake.chat_requests, 10), "the first instance never sent its request"
        assert not stores[0].redis.available  # type: ignore[attr-defined]  (so it was admitted locally)
        redis_server.start()
        assert wait_until(lambda: all(store.redis.available for store in stores),  # type: ignore[attr-defined]
                          10), "Redis never came back"
        instance = stack.running.gateway.store.redis.link.instance  # type: ignore[union-attr]
        assert wait_until(lambda: redis_server.command("HGET", key, instance) == b"$1\r\n1\r\n", 3), \
            "the slot taken locally was not counted in Redis"
        assert time.monotonic() - fake.chat_requests[0].at < hold, "Redis came back too late for the test"
        assert post(other.port)[0] == 200  # it waits for the slot the first instance holds
        holder.join(30)
        first, second = fake.chat_requests
        assert second.at - first.at >= hold - 0.05, "both instances ran a request on the only slot at once"
        assert wait_until(lambda: redis_server.command("HLEN", key) == b":0\r\n", 3), "a slot stayed held in Redis"
    finally:
        instances.close()


def wait_for_heartbeat_after_a_flush(stack: Stack, redis_server: RedisServer, meanwhile: int = 0) -> None:
    """FLUSHALL: what a Redis restart too fast for any call to fail leaves (an empty Redis), `meanwhile`
    requests before a heartbeat notices; then wait until one has and the instance has put its part back."""
    link = stack.running.gateway.store.redis.link  # type: ignore[union-attr]
    redis_server.command("FLUSHALL")
    for _ in range(meanwhile):
        assert post(stack.port)[0] == 200  # (a fresh, full bucket in the emptied Redis)
    key = f"chatgpt-apiserver:instances:{link.instance}"
    assert wait_until(lambda: redis_server.command("EXISTS", key) == b":1\r\n", 5), "no heartbeat came"
    time.sleep(0.2)  # what it put back rides the next batch
    assert link.available  # no call failed: this was never an outage


def test_a_redis_that_forgets_everything_between_heartbeats_hands_out_no_fresh_burst(stack: Stack,
                                                                                     redis_server: RedisServer) -> None:
    fake = stack.fake("one")
    stack.gateway(shared_config(redis_server, [openai_controller(fake, rpm=6)], redis_timeout=0.2),
                  "--max-queue-wait", "0.3")
    assert [post(stack.port)[0] for _ in range(6)] == [200] * 6
    assert post(stack.port)[0] == 429
    wait_for_heartbeat_after_a_flush(stack, redis_server, meanwhile=1)
    back = [post(stack.port)[0] for _ in range(6)]
    assert back.count(200) <= 1, back  # the emptied Redis got the level of the heartbeat before


def test_a_redis_that_forgets_everything_between_heartbeats_gets_the_held_slots_back(stack: Stack,
                                                                                    redis_server: RedisServer) -> None:
    fake = stack.fake("one")
    hold = 8.0  # seconds the first instance's request holds the only slot at the upstream
    config = shared_config(redis_server, [openai_controller(fake, max_concurrency=1)], redis_timeout=0.2,
                           clients=[{"name": "app", "key": "app-key", "max_concurrency": 5}])
    instances = Instances(stack)

    def call(port: int) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/chat/completions", body=orjson.dumps(BODY),
                           headers={"Authorization": "Bearer app-key", "Content-Type": "application/json"})
        status = connection.getresponse().status
        connection.close()
        return status

    try:
        stack.gateway(config, "--max-queue-wait", "30")
        other = instances.start(config, "--max-queue-wait", "30")
        fake.cue(Cue(delay=hold))
        holder = threading.Thread(target=lambda: call(stack.port))
        holder.start()
        assert wait_until(lambda: fake.chat_requests, 10), "the first instance never sent its request"
        wait_for_heartbeat_after_a_flush(stack, redis_server)
        instance = stack.running.gateway.store.redis.link.instance  # type: ignore[union-attr]
        for key in ("chatgpt-apiserver:{one}:inflight", "chatgpt-apiserver:{client:app}:inflight"):
            assert redis_server.command("HGET", key, instance) == b"$1\r\n1\r\n", key  # the controller's, the client's
        assert time.monotonic() - fake.chat_requests[0].at < hold, "the heartbeat came too late for the test"
        assert call(other.port) == 200  # it waits for the slot the first instance holds
        holder.join(30)
        first, second = fake.chat_requests
        assert second.at - first.at >= hold - 0.05, "both instances ran a request on the only slot at once"
    finally:
        instances.close()


def test_readyz_says_not_ready_while_redis_is_away_and_the_rule_is_refuse(stack: Stack,
                                                                           redis_server: RedisServer) -> None:
    fake = stack.fake("one")
    stack.gateway(shared_config(redis_server, [openai_controller(fake)], redis_timeout=0.2,
                                redis_fallback="refuse"))
    assert post(stack.port, {}, "/readyz")[0] == 200
    redis_server.stop()
    status, _, body = post(stack.port)
    assert status == 503 and orjson.loads(body)["error"]["code"] == "shared_state_unavailable"
    status, headers, body = post(stack.port, {}, "/readyz")
    assert status == 503 and headers["retry-after"] == "1" and "Redis" in orjson.loads(body)["reason"]
    redis_server.start()
    deadline = time.monotonic() + 15
    while post(stack.port, {}, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "still not ready after Redis came back"
        time.sleep(0.1)
    assert post(stack.port)[0] == 200


def test_a_failing_model_leaves_other_models_served_at_once(stack: Stack) -> None:
    fakes = [stack.fake(name) for name in ("a", "b")]
    for fake in fakes:
        fake.model_cues["broken-model"] = Cue(mode="status", status=500)
    embeddings = stack.fake("embeddings")  # serves another model only: it must not count as a stand-in
    stack.gateway({"controllers": [*(openai_controller(fake) for fake in fakes),
                                   openai_controller(embeddings, models=["text-embedding-3-small"])]})
    client = openai.OpenAI(base_url=stack.base_url, api_key="k", timeout=30)  # the SDK's own retries too
    for _ in range(12):
        try:
            client.chat.completions.create(model="broken-model", messages=[{"role": "user", "content": "hi"}])
        except openai.APIStatusError as error:
            assert error.status_code in (500, 503)
    healthy = openai.OpenAI(base_url=stack.base_url, api_key="k", timeout=30, max_retries=0)
    started = time.monotonic()
    answer = healthy.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hello"
    assert time.monotonic() - started < 1.0  # no wait, no 429


def test_every_candidate_ejected_or_disabled_answers_503_with_retry_after(stack: Stack) -> None:
    flaky, turning = stack.fake("flaky"), stack.fake("turning")
    flaky.default = Cue(mode="status", status=500)
    stack.gateway({"controllers": [openai_controller(flaky), openai_controller(turning)]},
                  "--breaker-failures", "2", "--breaker-ejection", "30")
    while admin_port_ejected(stack.port, "flaky") is None:
        assert post(stack.port)[0] == 200  # turning serves what flaky fails
        assert len(flaky.chat_requests) <= 2
    turning.default = Cue(mode="status", status=401)
    post(stack.port)  # turning's key is refused: disabled until a reload
    status, headers, body = post(stack.port)
    error = orjson.loads(body)["error"]
    assert status == 503 and error["code"] == "upstream_unavailable", body
    assert 25 <= int(headers["retry-after"]) <= 30 and headers["x-should-retry"] == "false"
    assert "rate limit" not in error["message"].lower()


def admin_port_ejected(port: int, name: str) -> Optional[float]:
    ejected = admin(port)[name].get("ejected_models", {})
    return ejected.get("gpt-4o")


def test_made_up_model_names_do_not_grow_the_shared_breakers(stack: Stack, redis_server: RedisServer) -> None:
    fake = stack.fake("broken")
    fake.default = Cue(mode="status", status=500)
    stack.gateway(shared_config(redis_server, [openai_controller(fake)]), "--breaker-failures", "1000")
    for index in range(120):
        assert post(stack.port, {**BODY, "model": f"made-up-{index}"})[0] == 500
    time.sleep(0.2)
    fields = int(redis_server.command("HLEN", "chatgpt-apiserver:{broken}:brk")[1:].split(b"\r\n")[0])
    assert 0 < fields <= 4 * 17  # the first 16 names keep scopes of their own, the rest share "other"
