"""Rate-limit-aware scheduling end to end: buckets, queueing, cooldowns, disables, ejection, routing."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import openai
import orjson
import pytest

from .fake_upstream import Cue
from .harness import Stack, openai_controller


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True

MESSAGES = [{"role": "user", "content": "hi"}]
BODY = {"model": "gpt-4o", "messages": MESSAGES}


def admin(stack: Stack) -> dict[str, dict[str, object]]:
    status, _, body = stack.request("GET", "/admin/controllers")
    assert status == 200
    return {c["name"]: c for c in orjson.loads(body)["controllers"]}


def test_load_over_three_limited_upstreams_never_returns_an_upstream_429(stack: Stack) -> None:
    limits = {"fast": 600.0, "mid": 300.0, "slow": 150.0}  # 10, 5 and 2.5 requests per second
    fakes = {name: stack.fake(name) for name in limits}
    for name, fake in fakes.items():
        fake.limit(limits[name], burst=2)
    stack.gateway({"controllers": [openai_controller(fakes[n], rpm=limits[n], burst=1) for n in limits]},
                  "--max-queue-wait", "1.5", "--max-queue-size", "12")
    client = openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0, timeout=30)
    served: Counter[str] = Counter()
    ours: list[openai.RateLimitError] = []
    stop_at = time.monotonic() + 6
    lock = threading.Lock()

    def worker() -> None:
        while time.monotonic() < stop_at:
            try:
                raw = client.chat.completions.with_raw_response.create(**BODY)  # type: ignore[call-overload]
                with lock:
                    served[raw.headers["x-chatgpt-apiserver-controller"]] += 1
            except openai.RateLimitError as error:
                with lock:
                    ours.append(error)
                time.sleep(0.2)

    with ThreadPoolExecutor(24) as pool:
        for _ in range(24):
            pool.submit(worker)
    assert sum(fake.rejected for fake in fakes.values()) == 0, "an upstream had to answer 429"
    assert ours, "the offered load was above the limits, so some requests must get the gateway's 429"
    for error in ours:
        assert "at its limit" in error.message
        assert int(error.response.headers["retry-after"]) >= 1
    total = sum(served.values())
    assert total > 50
    # Each controller served in proportion to its limit (10 : 5 : 2.5) over the run.
    assert served["fast"] > served["mid"] > served["slow"] > 0
    assert 1.5 < served["fast"] / served["mid"] < 2.6 and 1.4 < served["mid"] / served["slow"] < 2.8


def test_a_request_waits_for_room_then_is_served(stack: Stack) -> None:
    fake = stack.fake("one")
    stack.gateway({"controllers": [openai_controller(fake, rpm=60, burst=1)]})
    started = time.monotonic()
    results = []
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(stack.request, "POST", "/v1/chat/completions", BODY) for _ in range(2)]:
            results.append(future.result())
    elapsed = time.monotonic() - started
    assert [status for status, _, _ in results] == [200, 200]
    assert 0.8 < elapsed < 3.0  # the second waited about a second for the bucket to refill


def test_queue_wait_bound_gives_our_429_with_retry_after(stack: Stack) -> None:
    fake = stack.fake("one")
    stack.gateway({"controllers": [openai_controller(fake, rpm=6, burst=1)]}, "--max-queue-wait", "0.5")
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    status, headers, body = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 429
    assert 9 <= int(headers["retry-after"]) <= 10  # the bucket refills one request in 10 s
    error = orjson.loads(body)["error"]
    assert error["type"] == "rate_limit_error" and "'gpt-4o' is at its limit" in error["message"]
    assert len(fake.chat_requests) == 1


def test_an_upstream_429_cools_the_controller_and_the_request_goes_elsewhere(stack: Stack) -> None:
    limited, spare = stack.fake("limited"), stack.fake("spare")
    limited.cue(Cue(mode="status", status=429, headers={"Retry-After": "30"}))
    stack.gateway({"controllers": [openai_controller(limited, weight=10), openai_controller(spare)]})
    status, headers, _ = stack.request("POST", "/v1/chat/completions", BODY)
    assert status == 200 and headers["x-chatgpt-apiserver-controller"] == "spare"
    state = admin(stack)["limited"]
    assert state["state"] == "cooling" and 28 < float(state["cooling_for"]) <= 30  # type: ignore[arg-type]
    for _ in range(3):
        assert stack.request("POST", "/v1/chat/completions", BODY)[1]["x-chatgpt-apiserver-controller"] == "spare"
    assert len(limited.chat_requests) == 1


@pytest.mark.parametrize("cue,reason", [
    (Cue(mode="status", status=429, body=b'{"error": {"message": "You exceeded your current quota, please check '
                                         b'your plan and billing details.", "type": "insufficient_quota", '
                                         b'"param": null, "code": "insufficient_quota"}}'), "quota"),
    (Cue(mode="status", status=401), "rejected the key (401)"),
    (Cue(mode="status", status=403), "rejected the key (403)"),
])
def test_quota_and_auth_errors_disable_the_controller(stack: Stack, cue: Cue, reason: str) -> None:
    bad, good = stack.fake("bad"), stack.fake("good")
    bad.default = cue
    stack.gateway({"controllers": [openai_controller(bad, weight=10, models=["gpt-4o", "o3"]),
                                   openai_controller(good, models=["gpt-4o"])]},
                  "--quota-disable-seconds", "600")
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    state = admin(stack)["bad"]
    assert state["state"] == "disabled" and reason in str(state["disabled_reason"])
    if "quota" in reason:
        assert 590 < float(state["disabled_for"]) <= 600  # type: ignore[arg-type]
    else:
        assert state["disabled_for"] is None  # until the config is reloaded
    for _ in range(3):
        assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    assert len(bad.chat_requests) == 1
    # A rejected key is lost until a reload: its only model leaves the list; a quota comes back on its own.
    listed = [model["id"] for model in orjson.loads(stack.request("GET", "/v1/models")[2])["data"]]
    assert listed == (["gpt-4o", "o3"] if "quota" in reason else ["gpt-4o"])


def test_5xx_ejection_and_recovery(stack: Stack) -> None:
    flaky, steady = stack.fake("flaky"), stack.fake("steady")
    flaky.default = Cue(mode="status", status=500)
    stack.gateway({"controllers": [openai_controller(flaky), openai_controller(steady)]},
                  "--breaker-failures", "2", "--breaker-ejection", "0.5")
    for _ in range(6):
        assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    assert len(flaky.chat_requests) == 2
    state = admin(stack)["flaky"]
    # A 5xx blames the model on that controller, not the whole controller (rules R6).
    assert state["state"] == "ok" and 0 < state["ejected_models"]["gpt-4o"] <= 0.5  # type: ignore[index]
    flaky.default = Cue()
    time.sleep(0.6)
    for _ in range(4):
        assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    assert "ejected_models" not in admin(stack)["flaky"]
    assert len(flaky.chat_requests) >= 3  # the probe went through and it is back in rotation


def test_the_last_usable_controller_is_not_ejected_for_5xx(stack: Stack) -> None:
    only = stack.fake("only")
    only.default = Cue(mode="status", status=503)
    stack.gateway({"controllers": [openai_controller(only)]}, "--breaker-failures", "2")
    for _ in range(5):
        assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 500
    state = admin(stack)["only"]
    assert state["state"] == "ok" and state["consecutive_failures"] == 5
    only.default = Cue()
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200


def test_retry_budget_bounds_attempts_when_every_upstream_fails(stack: Stack) -> None:
    fakes = [stack.fake(f"f{i}") for i in range(3)]
    for fake in fakes:
        fake.default = Cue(mode="status", status=503)
    stack.gateway({"controllers": [openai_controller(f) for f in fakes]},
                  "--retry-budget-ratio", "0.1", "--retry-budget-per-second", "0.1", "--breaker-failures", "1000")
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: stack.request("POST", "/v1/chat/completions", BODY)[0], range(100)))
    assert statuses == [500] * 100
    attempts = sum(len(f.chat_requests) for f in fakes)
    # 100 first attempts, plus at most the budget: its initial 10 plus 0.1 per request.
    assert 100 <= attempts <= 100 + 10 + 10 + 2


@pytest.mark.parametrize("asks", [False, True])
def test_usage_event_is_stripped_unless_the_client_asked(stack: Stack, asks: bool) -> None:
    fake = stack.fake("up")
    fake.default = Cue(mode="stream", events=3)
    stack.gateway({"controllers": [openai_controller(fake, tpm=100000)]})
    body = {**BODY, "stream": True, **({"stream_options": {"include_usage": True}} if asks else {})}
    status, _, raw = stack.request("POST", "/v1/chat/completions", body)
    assert status == 200
    sent = fake.chat_requests[0]
    assert sent.json["stream_options"] == {"include_usage": True}
    if not asks:
        assert sent.body.startswith(orjson.dumps(body)[:-1])  # the client's bytes, with the usage request added
    assert (b'"usage"' in raw) is asks
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [e for e in raw.split(b"\n\n") if e]
    assert len(events) == 1 + 3 + 1 + (1 if asks else 0) + 1
    state = admin(stack)["up"]
    assert state["counts"]["completion_tokens"] == 3  # type: ignore[index]
    assert state["buckets"]["tokens"]["level"] > 100000 - 20  # type: ignore[index]  # settled to what was used


def test_non_streaming_usage_settles_the_token_bucket(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake, tpm=10000)]})
    assert stack.request("POST", "/v1/chat/completions", {**BODY, "max_tokens": 4000})[0] == 200
    state = admin(stack)["up"]
    assert 10000 - 12 - 1 <= state["buckets"]["tokens"]["level"] <= 10000  # type: ignore[index]
    assert state["counts"] == {"successes": 1, "failures": 0, "rate_limited": 0, "prompt_tokens": 5,
                               "completion_tokens": 7}


def test_model_routing_and_aliases(stack: Stack) -> None:
    four, other = stack.fake("four"), stack.fake("other")
    stack.gateway({"controllers": [
        openai_controller(four, models={"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini"}),
        openai_controller(other, models=["llama"]),
    ]})
    answer = openai.OpenAI(base_url=stack.base_url, api_key="k", max_retries=0).chat.completions.create(**BODY)
    assert answer.model == "gpt-4o-2024-08-06"  # the response is left as the upstream wrote it
    assert four.chat_requests[0].json["model"] == "gpt-4o-2024-08-06"
    stack.request("POST", "/v1/chat/completions", {**BODY, "model": "gpt-4o-mini"})
    assert four.chat_requests[1].body == orjson.dumps({**BODY, "model": "gpt-4o-mini"})  # untouched
    stack.request("POST", "/v1/chat/completions", {**BODY, "model": "llama"})
    assert len(other.chat_requests) == 1 and len(four.chat_requests) == 2
    status, _, body = stack.request("POST", "/v1/chat/completions", {**BODY, "model": "claude"})
    assert status == 404 and orjson.loads(body)["error"]["code"] == "model_not_found"


def test_upstream_headers_lower_the_configured_limit(stack: Stack) -> None:
    fake = stack.fake("up")
    fake.limit(60, burst=60)  # the upstream's real limit
    stack.gateway({"controllers": [openai_controller(fake, rpm=6000)]})  # configured too high
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200
    bucket = admin(stack)["up"]["buckets"]["requests"]  # type: ignore[index]
    assert bucket["capacity"] == 60 and bucket["per_minute"] == 60 and bucket["level"] <= 59.1


@pytest.mark.parametrize("pool", ["least_busy", "capacity", "random", "balanced"])
def test_every_pool_type_serves(stack: Stack, pool: str) -> None:
    a, b = stack.fake("a"), stack.fake("b")
    a.default = b.default = Cue(delay=0.05)
    stack.gateway({"pool": {"type": pool}, "controllers": [openai_controller(a, rpm=6000), openai_controller(b)]})
    with ThreadPoolExecutor(8) as pool_:
        statuses = list(pool_.map(lambda _: stack.request("POST", "/v1/chat/completions", BODY)[0], range(40)))
    assert statuses == [200] * 40
    assert a.chat_requests and b.chat_requests


def test_least_busy_prefers_the_idle_controller(stack: Stack) -> None:
    slow, quick = stack.fake("slow"), stack.fake("quick")
    slow.default = Cue(delay=3.0)
    stack.gateway({"pool": {"type": "least_busy"}, "controllers": [openai_controller(slow), openai_controller(quick)]})
    with ThreadPoolExecutor(6) as pool:
        futures = []
        for _ in range(6):  # one every 200 ms: the quick upstream is idle again before the next arrives
            futures.append(pool.submit(stack.request, "POST", "/v1/chat/completions", BODY))
            time.sleep(0.2)
        in_flight = {name: c["in_flight"] for name, c in admin(stack).items()}
        assert [f.result()[0] for f in futures] == [200] * 6
    assert in_flight["slow"] == 1 and len(slow.chat_requests) == 1 and len(quick.chat_requests) == 5


def test_admin_view_shape(stack: Stack) -> None:
    fake = stack.fake("up")
    stack.gateway({"controllers": [openai_controller(fake, rpm=60, tpm=1000, max_concurrency=4,
                                                     models=["gpt-4o"], weight=3)]})
    view = admin(stack)["up"]
    assert view["limits"] == {"rpm": 60.0, "tpm": 1000.0, "max_concurrency": 4}
    assert view["models"] == {"gpt-4o": "gpt-4o"} and view["weight"] == 3 and view["state"] == "ok"
    assert set(view["buckets"]) == {"requests", "tokens"}  # type: ignore[arg-type]
    assert "sk-" not in orjson.dumps(view).decode()


def test_reload_keeps_state_of_unchanged_controllers(stack: Stack) -> None:
    keep, drop, new = stack.fake("keep"), stack.fake("drop"), stack.fake("new")
    keep.cue(Cue(mode="status", status=429, headers={"Retry-After": "60"}))
    stack.gateway({"controllers": [openai_controller(keep, weight=5), openai_controller(drop)]})
    assert stack.request("POST", "/v1/chat/completions", BODY)[0] == 200  # keep cools down, drop answers
    assert admin(stack)["keep"]["state"] == "cooling"
    gateway = stack.running.gateway  # type: ignore[union-attr]
    settings = stack.settings({"controllers": [openai_controller(keep, weight=5), openai_controller(new)]})
    stack.loop.run(gateway.reload(settings))
    view = admin(stack)
    assert set(view) == {"keep", "new"}
    assert view["keep"]["state"] == "cooling"  # its cooldown survived the reload
    assert stack.request("POST", "/v1/chat/completions", BODY)[1]["x-chatgpt-apiserver-controller"] == "new"
    # The removed controller is retired: its pooled connection to its upstream is closed; the kept one's is not.
    assert wait_for(lambda: drop.open_connections == 0), drop.open_connections
    assert keep.open_connections == 1
