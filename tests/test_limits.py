"""Buckets, header parsing, cooldowns and the circuit breaker, exactly, with an injected clock."""

from __future__ import annotations

import math

import pytest

from chatgpt_apiserver.config.controllers import Limits
from chatgpt_apiserver.controllers.rate_headers import RateHeaders, parse_duration, parse_retry_after
from chatgpt_apiserver.state.buckets import TokenBucket
from chatgpt_apiserver.state.health import FOREVER, BreakerPolicy, ControllerState


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
    bucket.correct(remaining=40, limit=None, now=0.0)
    assert bucket.level == 40
    bucket.correct(remaining=900, limit=None, now=0.0)
    assert bucket.level == 40  # never believe more than we think we have
    bucket.correct(remaining=None, limit=100, now=0.0)
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


def state(**limits: float) -> ControllerState:
    return ControllerState("c", Limits(**limits), BreakerPolicy(failures=3, base_ejection=10, max_ejection=35))  # type: ignore[arg-type]


def test_room_in_all_three_limits() -> None:
    s = state(rpm=60, tpm=1000, max_concurrency=2, request_burst=2)
    assert s.has_room(100, 0.0)
    s.reserve(100, 0.0)
    s.reserve(100, 0.0)
    assert not s.has_room(100, 0.0)  # concurrency (and the request burst)
    s.release(100, 100, 0.0)
    assert not s.has_room(100, 0.0)  # the request bucket is empty until it refills
    assert s.has_room(100, 1.0)
    assert not s.has_room(900, 1.0)  # 800 tokens, plus one second of refill
    assert s.free_in(900, 1.0) == pytest.approx((900 - 800 - 1000 / 60) / (1000 / 60))


def test_tokens_are_settled_against_usage() -> None:
    s = state(tpm=1000)
    s.reserve(600, 0.0)
    s.release(600, 100, 0.0)
    assert s.tokens is not None and s.tokens.level == 900
    s.reserve(100, 0.0)
    s.release(100, 400, 0.0)
    assert s.tokens.level == 500
    s.reserve(100, 0.0)
    s.release(100, None, 0.0)  # unknown usage keeps the reservation
    assert s.tokens.level == 400


def test_cooldown_extends_and_never_shortens() -> None:
    s = state()
    s.rate_limited(10, now=0.0)
    assert s.status(5.0) == "cooling" and not s.usable(5.0)
    s.rate_limited(2, now=5.0)  # ends at 7 < 10: ignored
    assert s.cooling_until == 10.0
    s.rate_limited(20, now=5.0)
    assert s.cooling_until == 25.0
    assert s.status(25.0) == "ok" and s.usable(25.0)
    assert s.free_in(1, 20.0) == 5.0


def test_disable_for_quota_and_forever_for_auth() -> None:
    s = state()
    s.disable("out of quota", 3600, now=0.0)
    assert s.status(3599.0) == "disabled" and s.status(3600.0) == "ok"
    s.disable("bad key", FOREVER, now=3600.0)
    assert s.status(1e12) == "disabled" and math.isinf(s.free_in(1, 0.0))
    assert s.snapshot(4000.0)["disabled_reason"] == "bad key"


def test_breaker_ejects_after_consecutive_failures_with_growing_times() -> None:
    s = state()
    s.failed(True, 0.0)
    s.failed(True, 0.0)
    assert s.status(0.0) == "ok"
    s.failed(True, 0.0)
    assert s.status(0.0) == "ejected" and s.ejected_until == 10.0
    # half-open: after the ejection one probe may go
    assert s.usable(10.0)
    s.reserve(1, 10.0)
    assert not s.usable(10.0)  # the probe is in flight
    s.failed(True, 10.5)  # the probe failed: ejected again, twice as long
    s.release(1, None, 10.5)
    assert s.ejected_until == 30.5
    s.reserve(1, 31.0)
    s.failed(True, 31.0)
    s.release(1, None, 31.0)
    assert s.ejected_until == 31.0 + 35  # capped at max_ejection
    s.reserve(1, 70.0)
    s.succeeded(70.5)
    s.release(1, None, 70.5)
    assert s.status(70.5) == "ok" and s.consecutive_failures == 0 and s.ejections == 0
    s.failed(True, 71.0)
    assert s.status(71.0) == "ok"  # the count starts again


def test_success_resets_the_failure_count() -> None:
    s = state()
    s.failed(True, 0.0)
    s.failed(True, 0.0)
    s.succeeded(0.0)
    s.failed(True, 0.0)
    s.failed(True, 0.0)
    assert s.status(0.0) == "ok"


def test_the_last_usable_controller_is_never_ejected_for_failures() -> None:
    s = state()
    for _ in range(10):
        s.failed(False, 0.0)
    assert s.status(0.0) == "ok" and s.consecutive_failures == 10
