"""Scale-out: several instances share rate-limit state in a real Redis."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from chatgpt_apiserver.config.controllers import ControllerSpec, Limits
from chatgpt_apiserver.controllers.mock import MockController
from chatgpt_apiserver.state import Policy, Ticket
from chatgpt_apiserver.state.redis import RedisStore
from chatgpt_apiserver.state.redis_link import RedisLink
from chatgpt_apiserver.state.redis_wire import Address, Packed, RespConnection, pack

from .fake_upstream import Cue, FakeUpstream
from .harness import Stack, openai_controller
from .redis_server import RedisServer
from .test_lifecycle import Server

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def controller(name: str = "c", **limits: Any) -> MockController:
    return MockController(ControllerSpec(name, "mock", 1, None, limits=Limits(**limits)))


async def store(redis_server: RedisServer, *controllers: MockController, prefix: str = "test") -> RedisStore:
    link = RedisLink(redis_server.url, prefix, 1.0)
    await link.start()
    made = RedisStore(link)
    made.configure(list(controllers), Policy())
    return made


def test_concurrent_takes_never_overdraw(redis_server: RedisServer) -> None:
    async def run() -> tuple[int, int]:
        requests = controller("req", rpm=1, request_burst=100)  # refills one a minute: effectively fixed
        tokens = controller("tok", tpm=1, token_burst=1000)
        one, two = await store(redis_server, requests, tokens), await store(redis_server, requests, tokens)
        try:
            results = await asyncio.gather(*(s.admit(requests, "m", 1) for _ in range(150) for s in (one, two)))
            token_results = await asyncio.gather(*(s.admit(tokens, "m", 30) for _ in range(50) for s in (one, two)))
        finally:
            await one.link.close()
            await two.link.close()
        return sum(r.ok for r in results), sum(r.ok for r in token_results)

    took_requests, took_tokens = asyncio.run(run())
    assert took_requests == 100
    assert took_tokens == 1000 // 30


def test_every_key_expires_by_itself(redis_server: RedisServer) -> None:
    async def run() -> None:
        c = controller("c", rpm=60, tpm=1000, max_concurrency=2)
        s = await store(redis_server, c)
        try:
            assert (await s.admit(c, "m", 10)).ok
            s.release(Ticket(c, "m", 10), 5, None, 0.0)
            s.rate_limited(c, 10)
            s.disable(c, "m", float("inf"), "bad deployment")
            s.failed(c, "m", False, True)
            await s.views([c])  # after the calls above, in order on one connection
        finally:
            await s.link.close()

    asyncio.run(run())
    keys = [key for key in redis_server.command("KEYS", "test:{c}:*").split(b"\r\n") if key.startswith(b"test:")]
    assert len(keys) >= 5
    for key in keys:
        ttl = int(redis_server.command("PTTL", key.decode())[1:].split(b"\r\n")[0])
        assert 0 < ttl <= 7 * 86_400_000, key  # nothing lives forever: at most a week for "until a reload"
    cool = int(redis_server.command("PTTL", "test:{c}:cool")[1:].split(b"\r\n")[0])
    assert 9000 < cool <= 10000


def test_shared_circuit_breaker_ejects_for_everyone(redis_server: RedisServer) -> None:
    async def run() -> None:
        c = controller("flaky")
        one, two = await store(redis_server, c), await store(redis_server, c)
        try:
            for _ in range(5):
                one.failed(c, "gpt-4o", False, True)
            await one.views([c])  # the failures are in
            taken = await two.admit(c, "gpt-4o", 1)
            assert not taken.ok and taken.reason == "ejected" and 4 < taken.wait <= 5
            assert (await two.admit(c, "gpt-4o-mini", 1)).ok  # another model on it is unaffected
            assert two.health(c, "gpt-4o").status == "ejected"  # the mirror learned it
        finally:
            await one.link.close()
            await two.link.close()

    asyncio.run(run())


def start_instances(tmp_path: Path, fakes: list[FakeUpstream], redis_url: str, count: int,
                    limits: dict[str, float], *extra: str) -> list[Server]:
    config = tmp_path / "shared.json"
    config.write_bytes(orjson.dumps({"controllers": [
        openai_controller(fake, rpm=limits[fake.name], burst=1) for fake in fakes]}))
    servers = []
    for index in range(count):
        workdir = tmp_path / f"instance-{index}"
        workdir.mkdir()
        (workdir / "c.json").write_bytes(config.read_bytes())
        servers.append(Server(workdir / "c.json", "--redis-url", redis_url, "--max-queue-wait", "1", *extra))
    return servers


def post(port: int, body: dict[str, Any]) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=orjson.dumps(body))
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}


def test_instances_share_limits_and_never_overspend(stack: Stack, redis_server: RedisServer, tmp_path: Path) -> None:
    limits = {"big": 240.0, "small": 120.0}  # 4 and 2 requests a second
    fakes = [stack.fake(name) for name in limits]
    for fake in fakes:
        fake.limit(limits[fake.name], burst=2)
    servers = start_instances(tmp_path, fakes, redis_server.url, 3, limits)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + 5

    def worker(port: int) -> None:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=30)
        while time.monotonic() < stop_at:
            try:
                client.chat.completions.create(**BODY)  # type: ignore[call-overload]
                status = 200
            except openai.RateLimitError as error:
                assert "at its limit" in error.message  # ours, never an upstream's
                status = 429
            with lock:
                statuses[status] += 1
            if status == 429:
                time.sleep(0.2)

    threads = [threading.Thread(target=worker, args=(s.port,)) for s in servers for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for server in servers:
            assert server.stop() == 0
    assert sum(fake.rejected for fake in fakes) == 0, "an upstream had to answer 429: the limits were overspent"
    served = {fake.name: len(fake.accepted_at) for fake in fakes}
    assert statuses[200] == sum(served.values()) and statuses[429] > 0
    # Three instances, one shared budget: about 5 s x (4 + 2) per second, not three times that.
    assert 20 <= sum(served.values()) <= 5.5 * 6 + 4
    assert served["big"] > served["small"]


def test_a_429_seen_by_one_instance_cools_the_controller_for_all(stack: Stack, redis_server: RedisServer,
                                                                 tmp_path: Path) -> None:
    hot, cold = stack.fake("hot"), stack.fake("cold")
    hot.cue(Cue(mode="status", status=429, headers={"Retry-After": "30"}))
    servers = start_instances(tmp_path, [hot, cold], redis_server.url, 2, {"hot": 6000, "cold": 6000})
    try:
        assert post(servers[0].port, BODY)[0] == 200  # hot answered 429, cold served it
        assert len(hot.chat_requests) == 1
        time.sleep(0.2)
        for _ in range(6):
            status, headers = post(servers[1].port, BODY)
            assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "cold"
        assert len(hot.chat_requests) == 1  # the other instance never tried it
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize("fallback", ["local", "refuse"])
def test_redis_outage_falls_back_and_recovers(stack: Stack, redis_server: RedisServer, fallback: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    fake = stack.fake("up")
    stack.gateway({"redis_url": redis_server.url, "redis_fallback": fallback, "redis_timeout": 0.2,
                   "controllers": [openai_controller(fake, rpm=6000)]})
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    assert b"up" in redis_server.command("KEYS", "*")
    statuses: list[int] = []
    latencies: list[float] = []
    done = threading.Event()

    def load() -> None:  # keeps sending while Redis dies
        while not done.is_set():
            started = time.monotonic()
            statuses.append(stack.request("POST", "/v1/chat/completions", BODY)[0])
            latencies.append(time.monotonic() - started)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    redis_server.stop()
    time.sleep(1.0)
    done.set()
    for worker in workers:
        worker.join(10)
    assert statuses.count(200) > 10
    assert max(latencies) < 2  # no request hung on Redis
    after_kill = [stack.request("POST", "/v1/chat/completions", BODY)[0] for _ in range(5)]
    assert after_kill == ([200] * 5 if fallback == "local" else [503] * 5)
    assert set(statuses) <= ({200} if fallback == "local" else {200, 503})
    assert sum("Redis is unreachable" in r.getMessage() for r in caplog.records) == 1  # one line per transition
    redis_server.start()
    deadline = time.monotonic() + 10
    while not any("reachable again" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    assert b"{up}:req" in redis_server.command("KEYS", "*")  # the shared state is in use again
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1


def test_processes_share_one_port_with_reuse_port(stack: Stack, redis_server: RedisServer, tmp_path: Path) -> None:
    fake = stack.fake("up")
    servers = []
    for index in range(2):
        workdir = tmp_path / f"instance-{index}"
        workdir.mkdir()
        config = workdir / "c.json"
        config.write_bytes(orjson.dumps({"controllers": [openai_controller(fake, rpm=6000)]}))
        port = servers[0].port if servers else 0
        servers.append(Server(config, "--reuse-port", "--redis-url", redis_server.url, port=port))
    try:
        for _ in range(40):  # new connections are spread over both processes by the kernel
            assert post(servers[0].port, BODY)[0] == 200
        deadline = time.monotonic() + 5  # each line is written just after its response leaves
        while True:
            answered = [server.output().count("chatgpt_apiserver.access") for server in servers]
            if sum(answered) == 40 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sum(answered) == 40 and min(answered) > 0
    finally:
        assert [server.stop() for server in servers] == [0, 0]


def test_password_and_database_from_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret").start()
    try:
        async def run() -> bool:
            link = RedisLink(server.url.replace("/0", "/3"), "authed", 1.0)
            await link.start()
            c = controller("c", rpm=60)
            s = RedisStore(link)
            s.configure([c], Policy())
            try:
                return (await s.admit(c, "m", 1)).ok and link.available
            finally:
                await link.close()

        assert asyncio.run(run())
        assert b"authed:{c}:req" in server.command("KEYS", "*", db=3)
        assert b"authed" not in server.command("KEYS", "*")
    finally:
        server.stop()


def test_a_packed_run_of_arguments_is_sent_as_those_arguments(redis_server: RedisServer) -> None:
    """Keys and limits encoded once (`Packed`) make the same command as the arguments one by one: Redis
    counts them as such (a wrong count is a protocol error) and stores what they say."""
    plain = pack(b"HSET", b"packed:h", b"f1", b"v1", "f2", 2.5, b"f3", b"")
    assert pack(b"HSET", Packed(b"packed:h", b"f1"), b"v1", Packed("f2", 2.5), b"f3", Packed(b"")) == plain

    async def run() -> Any:
        connection = await RespConnection.open(Address.parse(redis_server.url))
        try:
            first, second = await asyncio.gather(*connection.send([
                pack(b"HSET", Packed(b"packed:h", b"f1"), b"v1", Packed("f2", 2.5), b"f3", Packed(b"")),
                pack(b"HGETALL", Packed(b"packed:h"))]))
            return first, second
        finally:
            connection.close()

    created, stored = asyncio.run(run())
    assert created == 3
    assert dict(zip(stored[::2], stored[1::2], strict=True)) == {b"f1": b"v1", b"f2": b"2.5", b"f3": b""}
