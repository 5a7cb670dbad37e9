"""Token buckets and the upstream's rate-limit headers, exactly, with an injected clock.

Cooldowns, disables and the breaker are in the rules table, tests/test_store_rules.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from chatgpt_apiserver.config.controllers import ControllerSpec
from chatgpt_apiserver.config.settings import parse_settings
from chatgpt_apiserver.controllers import Verdict
from chatgpt_apiserver.controllers.mock import MockController
from chatgpt_apiserver.controllers.rate_headers import RateHeaders, parse_duration, parse_retry_after
from chatgpt_apiserver.scheduling.balancer import SmoothWeighted
from chatgpt_apiserver.scheduling.outcomes import record_status
from chatgpt_apiserver.scheduling.scheduler import QueuePolicy, Scheduler
from chatgpt_apiserver.state import LocalStore, Policy
from chatgpt_apiserver.state.buckets import TokenBucket
from chatgpt_apiserver.state.store import COOLING, OK, Health


def test_bucket_starts_full_and_refills_continuously() -> None:
    bucket = TokenBucket(60, now=0.0)  # one per second, burst 60
    assert bucket.capacity == 60 and bucket.has(60, 0.0)
    bucket.take(60, 0.0)
    assert not bucket.has(1, 0.5)
    assert bucket.has(1, 1.0)
    assert bucket.wait_for(5, 1.0) == pytest.approx(4.0)
    assert bucket.refill(1000.0) == 60  # never above capacity


def test_bucket_burst_and_oversized_requests() -> None:
    bucket = TokenBucket(600, burst=5, now=0.0)
    for _ in range(5):
        assert bucket.has(1, 0.0)
        bucket.take(1, 0.0)
    assert not bucket.has(1, 0.0)
    assert bucket.wait_for(1, 0.0) == pytest.approx(0.1)
    big = TokenBucket(100, now=0.0)
    assert big.has(500, 0.0)  # larger than capacity: allowed when full, then it empties the bucket
    big.take(500, 0.0)
    assert big.level == -400 and big.wait_for(1, 0.0) == pytest.approx(401 * 0.6)


def test_bucket_give_and_correct() -> None:
    bucket = TokenBucket(1000, now=0.0)
    bucket.take(800, 0.0)
    bucket.give(300, 0.0)
    assert bucket.level == 500
    bucket.give(10_000, 0.0)
    assert bucket.level == 1000
    bucket.correct(remaining=40, limit=None, age=0.0, now=0.0)
    assert bucket.level == 40
    bucket.correct(remaining=900, limit=None, age=0.0, now=0.0)
    assert bucket.level == 40  # never believe more than we think we have
    bucket.correct(remaining=None, limit=100, age=0.0, now=0.0)
    assert bucket.capacity == 100 and bucket.rate == pytest.approx(100 / 60)


@pytest.mark.parametrize("text,seconds", [
    ("6m0s", 360.0), ("1.5s", 1.5), ("20ms", 0.02), ("1h2m3s", 3723.0), ("12", 12.0), ("0s", 0.0),
    ("2m30.5s", 150.5), ("", None), (None, None), ("soon", None), ("5x", None), ("s", None),
])
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_parse_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", lambda: 1445412480.0) == 10.0
    assert parse_retry_after("garbage") is None


def test_rate_headers_cooldown() -> None:
    assert RateHeaders.parse({"retry-after": "3"}).cooldown() == 3.0
    headers = RateHeaders.parse({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s",
                                 "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"})
    assert headers.cooldown() == 360.0
    headers = RateHeaders.parse({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "20ms",
                                 "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2s"})
    assert headers.cooldown() == 2.0
    assert RateHeaders.parse({}).cooldown() is None


def test_azure_millisecond_retry_headers_win_over_retry_after() -> None:
    # Azure's 429 says both; the milliseconds are the finer figure.
    assert RateHeaders.parse({"retry-after": "2", "retry-after-ms": "1500"}).cooldown() == 1.5
    assert RateHeaders.parse({"retry-after": "1", "x-ms-retry-after-ms": "250.5"}).cooldown() == 0.2505
    assert RateHeaders.parse({"retry-after-ms": "40", "x-ms-retry-after-ms": "900"}).cooldown() == 0.04
    assert RateHeaders.parse({"retry-after-ms": "0"}).cooldown() == 0.0


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "inf", ""])
def test_an_unusable_millisecond_header_falls_back_to_retry_after(value: str) -> None:
    assert RateHeaders.parse({"retry-after-ms": value, "retry-after": "3"}).cooldown() == 3.0
    assert RateHeaders.parse({"x-ms-retry-after-ms": value}).cooldown() is None


@pytest.mark.parametrize("text", ["inf", "nan", "-inf"])
def test_a_retry_after_that_is_not_finite_is_ignored(text: str) -> None:
    assert parse_retry_after(text) is None
    assert RateHeaders.parse({"retry-after": text}).cooldown() is None


def test_a_429_with_retry_after_ms_cools_the_controller_for_exactly_that_long(tmp_path: Path) -> None:
    now = [100.0]

    def clock() -> float:
        return now[0]

    controller = MockController(ControllerSpec("east", "mock", 1, None))
    store = LocalStore(clock)
    store.configure([controller], Policy())
    scheduler = Scheduler([controller], store, SmoothWeighted(), QueuePolicy(1.0, 10), clock)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"controllers": [{"type": "mock"}], "cooldown_default": 9}))
    settings, _ = parse_settings(["--config-file", str(config)], {})
    headers = RateHeaders.parse({"retry-after": "2", "retry-after-ms": "1500", "x-ratelimit-remaining-requests": "0"})

    async def answer_429() -> Verdict:
        lease = await scheduler.acquire("gpt-4o", 1)
        verdict = record_status(lease, 429, headers, b'{"error": {"code": "429", "message": "retry"}}',
                                scheduler, settings)
        lease.release(0)
        return verdict

    assert asyncio.run(answer_429()) is Verdict.FAULT
    assert store.health(controller, "gpt-4o") == Health(COOLING, 1.5)
    now[0] = 101.499
    assert store.health(controller, "gpt-4o").status == COOLING
    now[0] = 101.5
    assert store.health(controller, "gpt-4o") == Health(OK)
