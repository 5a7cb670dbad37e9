"""Client budgets: tokens and dollars per UTC period, streams included, a stream in flight never cut, and
spending that survives a restart with and without Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from chatgpt_apiserver.server import reload

from .fake_upstream import Cue, FakeUpstream
from .harness import Stack, openai_controller
from .redis_server import RedisServer

MESSAGES = [{"role": "user", "content": "Say hello"}]
Api = Callable[..., openai.OpenAI]  # the `api` fixture
PRICES = {"gpt-4o": {"input": 10_000, "output": 10_000}}  # $0.01 a token: a 12-token answer costs $0.12


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, **extra)


def admin(stack: Stack, path: str = "/admin/clients/team") -> Any:
    status, _headers, body = stack.request("GET", path, headers={"Authorization": "Bearer admin-key"})
    assert status == 200, body
    return orjson.loads(body)


def config(fake: FakeUpstream, budget: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"controllers": [openai_controller(fake)], "prices": PRICES, "admin_key": "admin-key",
            "clients": [{"name": "team", "key": "team-key", "budget": budget},
                        {"name": "other", "key": "other-key"}], **extra}


def restart(stack: Stack, document: dict[str, Any]) -> None:
    """Stop the gateway (it writes its state on the way out) and start a new one on the same config."""
    assert stack.running is not None
    stack.loop.run(stack.running.stop(grace=1.0))
    stack.running = None
    stack.gateway(document)


def assert_out_of_budget(client: openai.OpenAI, spent: str) -> None:
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client)
    error = refused.value
    assert error.status_code == 429 and error.code == "insufficient_quota"
    assert error.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert "'team'" in error.message and spent in error.message and "renews at" in error.message
    assert error.response.headers["x-should-retry"] == "false"  # the SDKs must not retry it
    assert int(error.response.headers["retry-after"]) > 0


def test_a_token_budget_runs_out_and_another_client_goes_on(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    stack.gateway(config(fake, {"tokens": 20, "period": "day"}))
    client = api("team-key")
    chat(client)
    chat(client)  # 12 tokens spent, under 20: admitted; it brings the day's spending to 24
    assert_out_of_budget(client, "24 of 20 tokens")
    assert len(fake.chat_requests) == 2
    assert chat(api("other-key")).http_response.status_code == 200
    view = admin(stack)
    assert view["budget"]["tokens"] == {"limit": 20, "spent": 24, "left": 0}
    assert view["budget"]["exhausted"] and view["budget"]["period"] == "day"
    assert view["usage"]["models"]["gpt-4o"]["requests"] == 2 and view["refused"] == {"budget": 1}


@pytest.mark.parametrize("before,after", [("day", "month"), ("month", "day")])
def test_a_budget_whose_period_a_reload_changes_counts_in_the_new_period(stack: Stack, api: Api, before: str,
                                                                         after: str) -> None:
    fake = stack.fake()
    stack.gateway(config(fake, {"tokens": 30, "period": before}))
    client = api("team-key")
    chat(client)  # 12 tokens in the old period
    path = stack.tmp_path / "chatgpt-apiserver.json"
    path.write_bytes(orjson.dumps(config(fake, {"tokens": 30, "period": after})))
    assert stack.running is not None and stack.loop.run(reload(stack.running, ["--config-file", str(path)]))
    for _ in range(3):
        chat(client)  # the new period starts from zero: 12, 24 (under 30), then 36
    assert_out_of_budget(client, "36 of 30 tokens")
    view = admin(stack)
    assert view["budget"]["period"] == after and view["budget"]["tokens"]["spent"] == 36


def test_a_stored_response_is_charged_once_however_often_it_is_fetched(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    fake.store.background_seconds = 0.2
    stack.gateway(config(fake, {"tokens": 10_000, "period": "day"}))
    client = api("team-key")

    def spent() -> int:
        return int(admin(stack)["budget"]["tokens"]["spent"])

    made = client.responses.create(model="gpt-4o", input="hi")
    assert made.usage is not None and spent() == made.usage.total_tokens > 0
    for _ in range(3):
        client.responses.retrieve(made.id)  # a fetch runs no model
    assert spent() == made.usage.total_tokens
    before = spent()
    queued = client.responses.create(model="gpt-4o", input="hi", background=True)
    assert queued.usage is None and spent() == before  # it has not run yet
    deadline = time.monotonic() + 10
    while (done := client.responses.retrieve(queued.id)).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert done.usage is not None and spent() == before + done.usage.total_tokens  # seen first here
    client.responses.retrieve(queued.id)
    events = list(client.responses.retrieve(queued.id, stream=True))
    assert events[-1].type == "response.completed" and spent() == before + done.usage.total_tokens
    assert admin(stack)["usage"]["models"]["(responses_get)"]["requests"] >= 6
    assert stack.running is not None
    [controller] = stack.running.gateway.controllers
    assert "(responses_get)" not in controller.stats.tokens_by_model  # nor does the controller count it again


def test_streamed_tokens_count_and_a_stream_in_flight_is_never_cut(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    stack.gateway(config(fake, {"tokens": 20}))
    client = api("team-key")
    fake.cue(Cue(mode="stream", events=10, interval=0.15))  # 1.5 s long; it will use 5 + 10 tokens
    received: list[str] = []

    def stream() -> None:
        with client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as events:
            received.extend(event.choices[0].delta.content or "" for event in events if event.choices)

    reader = threading.Thread(target=stream)
    reader.start()
    deadline = time.monotonic() + 10
    while not fake.chat_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    chat(client)  # 12 tokens while the stream runs: the budget is nearly spent
    reader.join()
    assert "".join(received) == "".join(f"hello{i} " for i in range(10))  # the whole stream, not cut
    assert_out_of_budget(client, "27 of 20 tokens")  # 12 + the stream's 15


def test_a_dollar_budget_at_the_configured_price(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    stack.gateway(config(fake, {"usd": 0.2}))
    client = api("team-key")
    chat(client)
    chat(client)
    assert_out_of_budget(client, "$0.24 of $0.20")
    view = admin(stack)
    assert view["usage"]["models"]["gpt-4o"]["cost_usd"] == pytest.approx(0.24)
    assert view["budget"]["usd"]["spent"] == pytest.approx(0.24)


def test_a_model_without_a_price_counts_tokens_and_says_it_has_no_cost(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    stack.gateway(config(fake, {"usd": 0.2}))
    client = api("team-key")
    client.chat.completions.create(model="house-model", messages=MESSAGES)
    described = admin(stack, "/admin/clients")
    row = next(c for c in described["clients"] if c["name"] == "team")["usage"]["models"]["house-model"]
    assert row["prompt_tokens"] == 5 and row["completion_tokens"] == 7
    assert row["cost_usd"] is None and row["priced"] is False
    assert described["unpriced_models"] == ["house-model"] and described["prices_as_of"]


def test_budgets_and_usage_survive_a_restart_without_redis(stack: Stack, api: Api, tmp_path: Path) -> None:
    fake = stack.fake()
    document = config(fake, {"tokens": 20}, state_dir=str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    stack.gateway(document)
    client = api("team-key")
    chat(client)
    chat(client)
    assert_out_of_budget(client, "24 of 20 tokens")
    restart(stack, document)
    assert (tmp_path / "state" / "clients.json").exists()
    assert_out_of_budget(api("team-key"), "24 of 20 tokens")
    usage = admin(stack)["usage"]["models"]["gpt-4o"]
    assert usage["requests"] == 2 and usage["completion_tokens"] == 14
    # The admin view goes on from the saved state; the counters are this process's own. (Counters that went on
    # from a file saved up to 5 s before a crash would go back, which Prometheus reads as a reset: the whole
    # total as new.)
    metrics = stack.request("GET", "/metrics", headers={"Authorization": "Bearer admin-key"})[2].decode()
    assert 'client_requests_total{client="team"' not in metrics, metrics


def test_the_admin_view_shows_a_restored_bucket_as_it_was_left(stack: Stack, api: Api, tmp_path: Path) -> None:
    fake = stack.fake()
    document = {"controllers": [openai_controller(fake)], "admin_key": "admin-key", "state_dir": str(tmp_path),
                "clients": [{"name": "team", "key": "team-key", "rpm": 3}]}  # one more every 20 s
    stack.gateway(document)
    client = api("team-key")
    for _ in range(3):
        chat(client)
    restart(stack, document)
    level = admin(stack)["buckets"]["requests"]["level"]
    assert level < 1, level  # not a full bucket of 3: the next request is refused
    with pytest.raises(openai.RateLimitError):
        chat(api("team-key"))


def test_a_dollar_budget_survives_a_restart_with_redis(stack: Stack, api: Api, redis_server: RedisServer) -> None:
    fake = stack.fake()
    document = config(fake, {"usd": 0.2}, redis_url=redis_server.url)
    stack.gateway(document)
    client = api("team-key")
    chat(client)
    chat(client)
    assert_out_of_budget(client, "$0.24 of $0.20")
    restart(stack, document)
    assert_out_of_budget(api("team-key"), "$0.24 of $0.20")
    usage = admin(stack)["usage"]["models"]["gpt-4o"]
    assert usage["requests"] == 2 and usage["cost_usd"] == pytest.approx(0.24)
    assert len(fake.chat_requests) == 2


def test_a_token_budget_survives_a_restart_with_redis(stack: Stack, api: Api, redis_server: RedisServer) -> None:
    fake = stack.fake()
    document = config(fake, {"tokens": 20}, redis_url=redis_server.url)
    stack.gateway(document)
    chat(api("team-key"))
    chat(api("team-key"))
    restart(stack, document)
    assert_out_of_budget(api("team-key"), "24 of 20 tokens")


def test_a_dollar_budget_survives_a_restart_without_redis(stack: Stack, api: Api, tmp_path: Path) -> None:
    fake = stack.fake()
    document = config(fake, {"usd": 0.2}, state_dir=str(tmp_path))
    stack.gateway(document)
    chat(api("team-key"))
    chat(api("team-key"))
    restart(stack, document)
    assert_out_of_budget(api("team-key"), "$0.24 of $0.20")


def wait_for_requests(stack: Stack, count: int) -> Any:
    """The client's admin view once `count` of its requests have settled (a cut one settles just after)."""
    deadline = time.monotonic() + 10
    while True:
        view = admin(stack)
        if view["usage"]["total"]["requests"] >= count or time.monotonic() > deadline:
            return view
        time.sleep(0.02)


def test_a_stream_the_client_cuts_short_is_charged_what_it_was_sent(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    stack.gateway(config(fake, {"tokens": 10_000, "usd": 100}))
    client = api("team-key")
    fake.cue(Cue(mode="stream", events=30, interval=0.1))  # 3 s; its usage event would come last
    with client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, max_tokens=500) as events:
        for count, _event in enumerate(events):
            if count == 3:
                break  # the client hangs up before the final usage event
    view = wait_for_requests(stack, 1)
    row = view["usage"]["models"]["gpt-4o"]
    # Charged an estimate: a quarter of its body as the prompt, a token per event it was sent.
    assert 15 <= row["prompt_tokens"] <= 40 and 4 <= row["completion_tokens"] <= 10
    spent = row["prompt_tokens"] + row["completion_tokens"]
    assert view["budget"]["tokens"]["spent"] == spent
    assert view["budget"]["usd"]["spent"] == pytest.approx(spent * 0.01)  # priced like reported usage


def test_a_stream_from_an_upstream_that_reports_no_usage_is_charged_an_estimate(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    document = config(fake, {"tokens": 30})
    document["controllers"] = [openai_controller(fake, stream_usage=False)]
    stack.gateway(document)
    client = api("team-key")
    fake.cue(Cue(mode="stream", events=10))
    with client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as events:
        assert len([event for event in events if event.choices]) == 12  # role, 10 deltas, finish
    view = wait_for_requests(stack, 1)
    row = view["usage"]["models"]["gpt-4o"]
    assert row["completion_tokens"] == 13  # a token per event, [DONE] included
    assert view["budget"]["tokens"]["spent"] == row["prompt_tokens"] + 13 >= 30  # a quarter of the body, ~20
    assert_out_of_budget(client, "of 30 tokens")


def test_a_request_the_client_leaves_while_the_upstream_works_is_charged_its_reservation(
        stack: Stack, api: Api) -> None:
    fake = stack.fake()
    document = config(fake, {"tokens": 10_000}, max_queue_wait=30)
    document["controllers"] = [openai_controller(fake, max_concurrency=1)]
    stack.gateway(document)
    fake.cue(Cue(delay=2.0), Cue(delay=2.0))
    busy = threading.Thread(target=chat, args=(api("other-key"),))  # holds the one slot for 2 s
    busy.start()
    deadline = time.monotonic() + 10
    while not fake.chat_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(openai.APITimeoutError):  # it left while waiting in the queue: nothing went upstream
        chat(api("team-key", timeout=0.5), max_tokens=100)
    busy.join()
    view = wait_for_requests(stack, 1)
    assert view["budget"]["tokens"]["spent"] == 0 and len(fake.chat_requests) == 1
    with pytest.raises(openai.APITimeoutError):
        chat(api("team-key", timeout=0.5), max_tokens=100)
    assert len(fake.chat_requests) == 2
    view = wait_for_requests(stack, 2)
    # The upstream may have written (and billed) the whole answer: the reservation, the prompt plus max_tokens.
    assert 115 <= view["budget"]["tokens"]["spent"] <= 140
    assert view["usage"]["models"]["gpt-4o"]["completion_tokens"] == view["budget"]["tokens"]["spent"] - \
        view["usage"]["models"]["gpt-4o"]["prompt_tokens"]


def test_a_small_dollar_budget_is_shown_with_its_digits(stack: Stack, api: Api) -> None:
    fake = stack.fake()
    stack.gateway(config(fake, {"usd": 0.00005}))
    client = api("team-key")
    chat(client)
    assert_out_of_budget(client, "($0.12 of $0.00005)")  # not "$0.12 of $0.00"
