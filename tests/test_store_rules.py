"""One table of events and expected states (state/rules.py, R1-R8), run against the local and the Redis store.

Both stores get the same injected clock (the Redis scripts take the time as an argument), so every wait
is exact. A rule implemented differently in Python and in Lua fails here.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from chatgpt_apiserver.config.controllers import ControllerSpec, Limits
from chatgpt_apiserver.controllers.mock import MockController
from chatgpt_apiserver.controllers.rate_headers import RateHeaders
from chatgpt_apiserver.state import LocalStore, Policy
from chatgpt_apiserver.state.redis import RedisStore
from chatgpt_apiserver.state.redis_link import RedisLink
from chatgpt_apiserver.state.store import WHOLE, ControllerStore, Ticket

from .redis_server import RedisServer

INF = math.inf
POLICY = Policy(breaker_failures=3, base_ejection=10.0, max_ejection=35.0)


@dataclass
class Case:
    """A controller's limits and a list of steps: (time, operation, arguments..., expected)."""

    name: str
    limits: Limits
    steps: list[tuple[Any, ...]]
    policy: Policy = field(default_factory=lambda: POLICY)


# Operations:
#   ("admit", model, tokens) -> expected (ok, reason, wait) or (True, "ok", 0, "probe")
#   ("release", model, reserved, used, probe, rate_headers_or_None, age)
#   ("fail", model, whole, may_eject) / ("succeed", model) / ("cool", seconds) / ("disable", scope, seconds)
#   ("clear",) / ("view", {field: expected})
CASES = [
    Case("R1 buckets refill, reserve and settle", Limits(rpm=60, tpm=1000, request_burst=2), [
        (0.0, "admit", "m", 300, (True, "ok", 0)),
        (0.0, "admit", "m", 300, (True, "ok", 0)),
        (0.0, "admit", "m", 300, (False, "requests", 1.0)),
        (1.0, "admit", "m", 600, (False, "tokens", (600 - 400 - 1000 / 60) / (1000 / 60))),
        (1.0, "release", "m", 300, 100, False, None, 0.0),
        (1.0, "admit", "m", 600, (True, "ok", 0)),
        (1.0, "view", {"in_flight": 2, "requests": 0.0, "tokens": 1000 - 600 + 1000 / 60 + 200 - 600}),
        (2.0, "release", "m", 300, 700, False, None, 0.0),  # used more than reserved: the bucket goes lower
        (2.0, "view", {"in_flight": 1, "requests": 1.0, "tokens": 1000 / 60 * 2 - 400}),
        (2.0, "release", "m", 600, None, False, None, 0.0),  # usage unknown: the reservation stands
        (2.0, "view", {"in_flight": 0, "tokens": 1000 / 60 * 2 - 400}),
        (100.0, "view", {"requests": 2.0, "tokens": 1000.0}),  # never above the capacity
    ]),
    Case("R1 a request larger than the capacity reserves a full bucket, no more", Limits(tpm=100), [
        (0.0, "admit", "m", 10**15, (True, "ok", 0)),  # a client's max_tokens cannot sink the bucket
        (0.0, "view", {"tokens": 0.0}),
        (0.0, "admit", "m", 1, (False, "tokens", 0.6)),
        (0.0, "release", "m", 10**15, None, False, None, 0.0),  # usage unknown: the full bucket stays taken
        (0.0, "view", {"tokens": 0.0}),
        (60.0, "admit", "m", 500, (True, "ok", 0)),
        (60.0, "release", "m", 500, 300, False, None, 0.0),  # used 300 of the 100 taken: 200 below zero
        (60.0, "view", {"tokens": -200.0}),
    ]),
    Case("R2 the upstream's headers lower the limit and the level", Limits(rpm=600, tpm=60000), [
        (0.0, "admit", "m", 10, (True, "ok", 0)),
        (0.0, "release", "m", 10, 10, False,
         {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "5",
          "x-ratelimit-remaining-tokens": "100"}, 2.0),
        # 5 left two seconds ago, at the lowered rate of 1/s: 7 now; 100 tokens then, at 1000/s: 2100
        (0.0, "view", {"requests": 7.0, "requests_capacity": 60.0, "tokens": 100 + 2.0 * 1000}),
        (2.0, "view", {"requests": 9.0}),
        (2.0, "release_unheld", "m", 0, 0, False, {"x-ratelimit-limit-requests": "6000"}, 0.0),  # never raised
        (2.0, "view", {"requests_capacity": 60.0}),
    ]),
    Case("R3 concurrency: a release frees the slot", Limits(max_concurrency=2), [
        (0.0, "admit", "m", 1, (True, "ok", 0)),
        (0.0, "admit", "n", 1, (True, "ok", 0)),
        (0.0, "admit", "m", 1, (False, "busy", INF)),
        (0.0, "release", "m", 1, 1, False, None, 0.0),
        (0.0, "admit", "m", 1, (True, "ok", 0)),
        (0.0, "view", {"in_flight": 2}),
    ]),
    Case("R4 cooldowns extend, never shorten, and empty the request bucket", Limits(rpm=600), [
        (0.0, "cool", 10.0),
        (0.0, "admit", "m", 1, (False, "cooling", 10.0)),
        (5.0, "cool", 2.0),
        (5.0, "admit", "m", 1, (False, "cooling", 5.0)),
        (5.0, "cool", 20.0),
        (5.0, "admit", "m", 1, (False, "cooling", 20.0)),
        (25.0, "view", {"status": "ok", "requests": 200.0}),  # emptied at 5 s, refilled 20 s at 10/s
        (25.0, "admit", "m", 1, (True, "ok", 0)),
    ]),
    Case("R5 disables per scope; a reload lifts only those that wait for one", Limits(), [
        (0.0, "disable", "m", INF),
        (0.0, "admit", "m", 1, (False, "disabled", INF)),
        (0.0, "admit", "n", 1, (True, "ok", 0)),
        (0.0, "view", {"status": "ok", "disabled_models": ["m"]}),
        (0.0, "disable", WHOLE, 100.0),
        (0.0, "admit", "n", 1, (False, "disabled", 100.0)),
        (10.0, "disable", WHOLE, 5.0),  # ends earlier: ignored
        (10.0, "view", {"status": "disabled", "wait": 90.0}),
        (10.0, "clear"),
        (10.0, "admit", "n", 1, (False, "disabled", 90.0)),  # out of quota: the reload does not fix that
        (100.0, "admit", "m", 1, (True, "ok", 0)),  # the reload lifted the model's disable
    ]),
    Case("R6 R7 the pair's breaker: ejections double up to the maximum, one probe at a time", Limits(), [
        (0.0, "fail", "m", False, True),
        (0.0, "fail", "m", False, True),
        (0.0, "admit", "m", 1, (True, "ok", 0)),
        (0.0, "fail", "m", False, True),
        (0.0, "admit", "m", 1, (False, "ejected", 10.0)),
        (0.0, "admit", "n", 1, (True, "ok", 0)),  # another model on the same controller is unaffected
        (0.0, "view", {"status": "ok", "ejected_models": ["m"], "consecutive_failures": 3}),
        (10.0, "admit", "m", 1, (True, "ok", 0, "probe")),
        (10.0, "admit", "m", 1, (False, "probing", 10.0)),
        (10.5, "fail", "m", False, True),  # the probe failed: twice as long
        (10.5, "release", "m", 1, 1, True, None, 0.0),
        (10.5, "admit", "m", 1, (False, "ejected", 20.0)),
        (11.0, "fail", "m", False, True),  # a late failure while ejected only counts
        (11.0, "admit", "m", 1, (False, "ejected", 19.5)),
        (31.0, "admit", "m", 1, (True, "ok", 0, "probe")),
        (31.0, "fail", "m", False, True),
        (31.0, "admit", "m", 1, (False, "ejected", 35.0)),  # capped at max_ejection
        (66.0, "admit", "m", 1, (True, "ok", 0, "probe")),
        (66.5, "succeed", "m"),
        (66.5, "admit", "m", 1, (True, "ok", 0)),
        (66.5, "fail", "m", False, True),
        (66.5, "fail", "m", False, True),
        (66.5, "admit", "m", 1, (True, "ok", 0)),  # the count started again
    ]),
    Case("R6 a connection failure ejects the whole controller; a success anywhere closes it", Limits(), [
        (0.0, "fail", "m", True, True),
        (0.0, "fail", "m", True, True),
        (0.0, "fail", "m", True, True),
        (0.0, "admit", "n", 1, (False, "ejected", 10.0)),
        (0.0, "view", {"status": "ejected", "wait": 10.0}),
        (10.0, "admit", "n", 1, (True, "ok", 0, "probe")),
        (10.0, "succeed", "n"),
        (10.0, "admit", "m", 1, (True, "ok", 0)),
    ]),
    Case("R7 a probe released without an outcome lets the next request probe", Limits(), [
        (0.0, "fail", "m", False, True),
        (0.0, "fail", "m", False, True),
        (0.0, "fail", "m", False, True),
        (10.0, "admit", "m", 1, (True, "ok", 0, "probe")),
        (10.0, "release", "m", 1, None, True, None, 0.0),
        (10.0, "admit", "m", 1, (True, "ok", 0, "probe")),
        (20.0, "admit", "m", 1, (True, "ok", 0, "probe")),  # a probe that never reports times out
    ]),
    Case("R8 refusals come in order: disabled, cooling, ejected, busy, requests",
         Limits(rpm=60, request_burst=1, max_concurrency=1), [
        (0.0, "admit", "m", 1, (True, "ok", 0)),
        (0.0, "admit", "m", 1, (False, "busy", INF)),  # the request bucket is empty too
        (0.0, "release", "m", 1, 1, False, None, 0.0),
        (0.0, "admit", "m", 1, (False, "requests", 1.0)),
        (0.0, "cool", 10.0),
        (0.0, "disable", WHOLE, 5.0),
        (2.0, "fail", "m", False, True),
        (2.0, "fail", "m", False, True),
        (2.0, "fail", "m", False, True),
        (2.0, "admit", "m", 1, (False, "disabled", 3.0)),
        (5.0, "admit", "m", 1, (False, "cooling", 5.0)),
        (10.0, "admit", "m", 1, (False, "ejected", 2.0)),
        (12.0, "admit", "m", 1, (True, "ok", 0, "probe")),
    ]),
    Case("R6 R9 a controller that may not be ejected keeps counting", Limits(), [
        *[(0.0, "fail", "m", False, False) for _ in range(5)],
        (0.0, "admit", "m", 1, (True, "ok", 0)),
        (0.0, "view", {"status": "ok", "consecutive_failures": 5}),
    ]),
]


class Clock:
    """The time both stores see."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def controller(limits: Limits) -> MockController:
    return MockController(ControllerSpec("ctl", "mock", 1, None, limits=limits))


@asynccontextmanager
async def make_store(kind: str, clock: Clock, redis_url: str) -> AsyncIterator[ControllerStore]:
    if kind == "local":
        yield LocalStore(clock)
        return
    link = RedisLink(redis_url, f"rules-{uuid.uuid4().hex[:8]}", 2.0)
    await link.start()
    try:
        yield RedisStore(link, clock, redis_clock=clock)
    finally:
        await link.close()


def check_view(view: Any, expected: dict[str, Any], where: str) -> None:
    for key, want in expected.items():
        if key in ("requests", "tokens"):
            got = view.buckets[key].level
        elif key == "requests_capacity":
            got = view.buckets["requests"].capacity
        elif key in ("ejected_models", "disabled_models"):
            got = sorted(getattr(view, key))
        else:
            got = getattr(view, key)
        if isinstance(want, float):
            assert got == pytest.approx(want, abs=0.01), f"{where}: {key}"
        else:
            assert got == want, f"{where}: {key}"


async def run_case(case: Case, store: ControllerStore, clock: Clock) -> None:
    c = controller(case.limits)
    store.configure([c], case.policy)
    start = clock.now
    for index, step in enumerate(case.steps):
        at, op, *args = step
        clock.now = start + at
        where = f"{case.name}, step {index} ({op} at {at})"
        if op == "admit":
            model, tokens, expected = args
            admission = await store.admit(c, model, tokens)
            ok, reason, wait, *probe = expected
            assert (admission.ok, admission.reason) == (ok, reason), where
            if math.isinf(wait):
                assert math.isinf(admission.wait), where
            else:
                assert admission.wait == pytest.approx(wait, abs=0.002), where
            assert admission.probe == bool(probe), where
        elif op in ("release", "release_unheld"):
            model, reserved, used, probe, headers, age = args
            rate = RateHeaders.parse(headers) if headers is not None else None
            store.release(Ticket(c, model, reserved, probe), used, rate, age)
        elif op == "fail":
            store.failed(c, args[0], args[1], args[2])
        elif op == "succeed":
            store.succeeded(c, args[0])
        elif op == "cool":
            store.rate_limited(c, args[0])
        elif op == "disable":
            store.disable(c, args[0], args[1], "disabled for the test")
        elif op == "clear":
            store.clear_disables(c)
        elif op == "view":
            check_view((await store.views([c]))["ctl"], args[0], where)
        else:
            raise AssertionError(op)


@pytest.mark.parametrize("kind", ["local", "redis"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_rules(case: Case, kind: str, shared_redis: RedisServer) -> None:
    async def run() -> None:
        clock = Clock()
        async with make_store(kind, clock, shared_redis.url) as store:
            await run_case(case, store, clock)

    asyncio.run(run())

