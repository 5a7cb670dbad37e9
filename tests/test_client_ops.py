"""Operating clients: reload under load, the admin and metrics views, the access log, the state file, and no
key or digest anywhere a client's data is shown."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from chatgpt_apiserver.clients.local import LocalClientStore
from chatgpt_apiserver.clients.registry import plan_for
from chatgpt_apiserver.clients.state_file import StateFile
from chatgpt_apiserver.clients.store import NO_PERIOD, Charge, ClientTicket, Period
from chatgpt_apiserver.config.check import render
from chatgpt_apiserver.config.clients import ClientSpec, RateLimit
from chatgpt_apiserver.server import reload

from .fake_upstream import Cue
from .harness import Stack, openai_controller
from .redis_server import RedisServer

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
Api = Callable[..., openai.OpenAI]


def post(port: int, key: str, body: Any = BODY) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=orjson.dumps(body),
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}


def admin(stack: Stack, path: str, key: str = "admin-key") -> tuple[int, Any]:
    status, _headers, body = stack.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    return status, orjson.loads(body) if body.startswith((b"{", b"[")) else body


def test_reload_adds_and_removes_a_client_under_load_without_dropping_a_request(stack: Stack) -> None:
    fake = stack.fake()
    fake.default = Cue(delay=0.02)
    clients = [{"name": "steady", "key": "steady-key", "rpm": 100_000}, {"name": "leaving", "key": "leaving-key"}]
    stack.gateway({"controllers": [openai_controller(fake)], "clients": clients, "admin_key": "admin-key"})
    assert stack.running is not None
    gateway = stack.running.gateway
    argv = ["--config-file", str(stack.tmp_path / "chatgpt-apiserver.json"), "--port", "0"]
    # The leaving client's request goes first and is held upstream, so it is surely in flight across the reload.
    fake.cue(Cue(delay=2.0))
    leaving: list[int] = []
    slow = threading.Thread(target=lambda: leaving.append(post(stack.port, "leaving-key")[0]))
    slow.start()
    deadline = time.monotonic() + 10
    while not fake.chat_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fake.chat_requests) == 1
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(post(stack.port, "steady-key")[0])

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)
        before = len(statuses)
        (stack.tmp_path / "chatgpt-apiserver.json").write_bytes(orjson.dumps({
            "controllers": [openai_controller(fake)], "admin_key": "admin-key",
            "clients": [clients[0], {"name": "arriving", "key": "arriving-key"}]}))
        store = gateway.clients.store
        bucket = store.clients["steady"].buckets["r"].bucket  # type: ignore[attr-defined]
        assert store.held("leaving") == 1 and not leaving
        assert stack.loop.run(reload(stack.running, argv))
        assert store.held("leaving") == 1 and not leaving  # still in flight after the reload
        assert store.clients["steady"].buckets["r"].bucket is bucket  # type: ignore[attr-defined]
        assert post(stack.port, "leaving-key")[0] == 401  # its key stopped working at once
        assert post(stack.port, "arriving-key")[0] == 200
        slow.join(30)
        assert leaving == [200]  # the removed client's request in flight finished well
        deadline = time.monotonic() + 5
        while store.held("leaving") and time.monotonic() < deadline:  # it settles just after its last byte
            time.sleep(0.01)
        assert store.held("leaving") == 0
        time.sleep(0.3)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert len(statuses) > before + 10 and set(statuses) == {200}  # nothing dropped
    status, described = admin(stack, "/admin/clients")
    names = [client["name"] for client in described["clients"]]
    assert status == 200 and names == ["steady", "arriving"]
    # The steady client's counts went on across the reload.
    assert described["clients"][0]["usage"]["total"]["requests"] == len(statuses)
    # The leaving client's request settled after the reload: its metrics did not come back with it.
    metrics = stack.request("GET", "/metrics", headers={"Authorization": "Bearer admin-key"})[2].decode()
    counted = re.findall(r'client_requests_total\{client="steady",model="[^"]+"\} ([0-9.]+)', metrics)
    assert sum(float(count) for count in counted) == len(statuses), metrics  # each request once, as admin says
    assert 'client="leaving"' not in metrics


def test_the_admin_view_metrics_and_access_log_name_clients_never_keys(
        stack: Stack, api: Api, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keys = {"inline": "sk-" + "inline-client-0123456789abcdef", "hashed": "sk-" + "hashed-client-0123456789abcd",
            "env": "sk-" + "env-client-0123456789abcdefgh", "plain": "sk-" + "plain-client-0123456789abcdef"}
    (tmp_path / "file.key").write_text("sk-" + "file-client-0123456789abcdefgh")
    keys["file"] = (tmp_path / "file.key").read_text()
    digests = {name: hashlib.sha256(key.encode()).hexdigest() for name, key in keys.items()}
    fake = stack.fake()
    document = {"controllers": [openai_controller(fake)], "admin_key": "admin-key", "redis_url": redis_server.url,
                "client_keys": [keys["plain"]], "clients": [
                    {"name": "inline", "key": keys["inline"], "rpm": 2, "budget": {"tokens": 100}},
                    {"name": "hashed", "key_sha256": digests["hashed"], "models": ["gpt-4o"]},
                    {"name": "env", "key_env": "ENV_CLIENT_KEY"}, {"name": "file", "key_file": "file.key"}]}
    stack.gateway(document, env={"ENV_CLIENT_KEY": keys["env"]})
    for name in ("inline", "hashed", "env", "file", "plain"):
        api(keys[name]).chat.completions.create(model="gpt-4o", messages=BODY["messages"])  # type: ignore[arg-type]
    api(keys["inline"]).chat.completions.create(model="gpt-4o", messages=BODY["messages"])  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):
        api(keys["inline"]).chat.completions.create(model="gpt-4o", messages=BODY["messages"])  # type: ignore[arg-type]
    with pytest.raises(openai.PermissionDeniedError):
        api(keys["hashed"]).chat.completions.create(model="o3", messages=BODY["messages"])  # type: ignore[arg-type]
    wrong = "sk-" + "wrong-client-0123456789abcdefgh"
    with pytest.raises(openai.AuthenticationError):
        api(wrong).chat.completions.create(model="gpt-4o", messages=BODY["messages"])  # type: ignore[arg-type]
    status, described = admin(stack, "/admin/clients")
    assert status == 200
    by_name = {client["name"]: client for client in described["clients"]}
    assert set(by_name) == {"inline", "hashed", "env", "file", "key-1"}
    assert by_name["inline"]["usage"]["total"]["requests"] == 2 and by_name["inline"]["refused"] == {"requests": 1}
    assert by_name["key-1"]["key_from"] == "client_keys" and by_name["env"]["key_from"] == "env ENV_CLIENT_KEY"
    metrics = stack.request("GET", "/metrics", headers={"Authorization": "Bearer admin-key"})[2].decode()
    assert 'chatgpt_apiserver_client_requests_total{client="inline",model="gpt-4o"} 2.0' in metrics
    assert 'chatgpt_apiserver_client_refused_total{client="hashed",reason="model"} 1.0' in metrics
    assert 'chatgpt_apiserver_client_tokens_total{client="file",kind="completion",model="gpt-4o"} 7.0' in metrics
    assert 'chatgpt_apiserver_client_budget{client="inline",kind="tokens"} 100.0' in metrics
    access = [r.getMessage() for r in caplog.records if r.name == "chatgpt_apiserver.access"]
    assert any("client=inline " in line and "status=429" in line for line in access)
    assert any("client=- " in line and "status=401" in line for line in access)
    redis_keys = redis_server.command("KEYS", "*").decode()
    shown = "\n".join([orjson.dumps(described).decode(), metrics, *(r.getMessage() for r in caplog.records),
                       stack.request("GET", "/admin/controllers", headers={"Authorization": "Bearer admin-key"})[2]
                       .decode(), render(stack.settings(document, env={"ENV_CLIENT_KEY": keys["env"]})), redis_keys])
    for secret in [*keys.values(), wrong, *digests.values(), hashlib.sha256(wrong.encode()).hexdigest()]:
        assert secret not in shown and secret[:14] not in shown


def test_admin_clients_of_one_and_an_unknown_name(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}], "admin_key": "admin-key",
                   "clients": [{"name": "one", "key": "one-key", "rpm": 60, "tpm": 6000, "max_concurrency": 3,
                                "model_limits": {"mock-gpt": {"rpm": 6}}}]})
    status, one = admin(stack, "/admin/clients/one")
    assert status == 200 and one["name"] == "one" and one["limits"] == {"rpm": 60, "tpm": 6000, "max_concurrency": 3}
    assert set(one["buckets"]) == {"requests", "tokens", "mock-gpt requests"}
    assert one["buckets"]["mock-gpt requests"] == {"level": 6, "capacity": 6, "per_minute": 6}
    assert admin(stack, "/admin/clients/nobody")[0] == 404
    assert admin(stack, "/admin/clients", key="one-key")[0] == 401  # a client's key does not open the admin view


def test_the_state_file_is_written_atomically_and_an_unreadable_one_is_set_aside(tmp_path: Path) -> None:
    spec = ClientSpec("team", b"\0" * 32, limits=RateLimit(rpm=60))
    plan = plan_for(spec)
    period = Period("2026-11", 1_796_083_200.0)

    async def run() -> None:
        wall = [1000.0]
        store = LocalClientStore(lambda: wall[0])
        state = StateFile(tmp_path, store, lambda: wall[0], interval=0.05)
        state.start()
        for _ in range(30):
            admission = await store.admit(plan, 10, period)
            store.settle(ClientTicket(plan, 10, period, None, "gpt-4o"), Charge.of("gpt-4o", 10, 10, 4, 1, 6, 99))
            assert admission.ok
        await asyncio.sleep(0.2)
        written = orjson.loads((tmp_path / "clients.json").read_bytes())  # the periodic write, whole
        assert written["clients"]["team"]["usage"]["gpt-4o"] == [30, 0, 4 * 30, 30, 6 * 30, 99 * 30]
        assert not list(tmp_path.glob(".*.tmp"))
        await state.close()
        wall[0] += 30  # a restart half a minute later: the bucket got half of its capacity back
        again = LocalClientStore(lambda: wall[0])
        StateFile(tmp_path, again, lambda: wall[0]).load()
        assert again.view_now(plan, period).usage["gpt-4o"][0] == 30
        admitted = await again.admit(plan, 1, period)
        assert admitted.ok and admitted.levels[0] == pytest.approx(60 - 30 + 30 - 1)

    asyncio.run(run())
    (tmp_path / "clients.json").write_text("{not json")
    fresh = LocalClientStore()
    StateFile(tmp_path, fresh).load()
    assert not fresh.clients and (tmp_path / "clients.json.unreadable").exists()
    assert not (tmp_path / "clients.json").exists()


def test_the_local_store_counts_for_the_metrics_only_what_this_process_counted() -> None:
    spec = ClientSpec("team", b"\0" * 32)
    plan = plan_for(spec)
    store = LocalClientStore()
    store.restore({"team": {"usage": {"gpt-4o": [5, 1, 50, 0, 20, 900], "o3": [2, 0, 10, 0, 4, 80]}},
                   "gone": {"usage": {"gpt-4o": [9, 0, 0, 0, 0, 0]}}}, 0.0)
    assert store.counted_here() == {}  # all of it was counted before this process
    store.admit_now(plan, 10, NO_PERIOD)
    store.settle(ClientTicket(plan, 10, NO_PERIOD, None, "gpt-4o"), Charge.of("gpt-4o", 10, 10, 4, 1, 6, 99))
    store.admit_now(plan, 10, NO_PERIOD)
    store.settle(ClientTicket(plan, 10, NO_PERIOD, None, "gpt-4.1"), Charge.of("gpt-4.1", 3, 3, 2, 0, 1, 7))
    assert store.counted_here() == {"team": {"gpt-4o": [1, 0, 4, 1, 6, 99], "gpt-4.1": [1, 0, 2, 0, 1, 7]}}
    assert store.view_now(plan, None).usage["gpt-4o"] == [6, 1, 54, 1, 26, 999]  # the admin view: every count
    store.configure([])  # a reload removes both: a client of that name later starts from nothing
    assert store.counted_here() == {} and not store.restored


def test_without_an_admin_key_no_client_key_opens_the_admin_views_or_metrics(
        stack: Stack, api: Api, caplog: pytest.LogCaptureFixture) -> None:
    fake = stack.fake()
    stack.gateway({"controllers": [openai_controller(fake)], "client_keys": ["plain-key"],
                   "clients": [{"name": "one", "key": "one-key"}, {"name": "two", "key": "two-key"}]})
    api("two-key").chat.completions.create(model="gpt-4o", messages=BODY["messages"])  # type: ignore[arg-type]
    for path in ("/admin/clients", "/admin/clients/two", "/admin/controllers", "/metrics"):
        for key in ("one-key", "plain-key"):  # a tenant must not see the others' usage
            status, body = admin(stack, path, key=key)
            assert status == 403, (path, key)
            error = body["error"]
            assert error["code"] == "admin_key_required" and error["type"] == "permission_error"
            assert "admin_key" in error["message"] and "two" not in error["message"]
        assert admin(stack, path, key="wrong-key")[0] == 401
    assert api("one-key").models.list().data is not None  # the API itself is unaffected
    settings = stack.settings({"controllers": [openai_controller(fake)],
                               "clients": [{"name": "one", "key": "one-key", "budget": {"usd": 5}},
                                           {"name": "two", "key": "two-key", "budget": {"usd": 5, "tokens": 9}}]})
    shown = render(settings)
    assert "warnings:" in shown and "admin_key is not set" in shown
    assert "client one: its budget is in USD only" in shown and "client two:" not in shown
    assert stack.running is not None
    caplog.set_level(logging.WARNING)
    argv = ["--config-file", str(stack.tmp_path / "chatgpt-apiserver.json"), "--port", "0"]
    assert stack.loop.run(reload(stack.running, argv))  # logged at start (cli.main) and at every reload
    assert any("admin_key is not set" in record.getMessage() for record in caplog.records)


def test_plain_client_keys_without_an_admin_key_still_open_the_admin_views(stack: Stack) -> None:
    stack.gateway({"controllers": [{"type": "mock"}], "client_keys": ["plain-key"]})
    assert admin(stack, "/admin/controllers", key="plain-key")[0] == 200  # as documented for plain keys
    assert "warnings:" not in render(stack.settings({"controllers": [{"type": "mock"}], "client_keys": ["k"]}))
