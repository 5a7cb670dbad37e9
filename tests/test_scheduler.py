"""The scheduler's queue: first in, first out, bounded in time and size; retry budgets."""

from __future__ import annotations

import asyncio
import time

import pytest

from chatgpt_apiserver.config.controllers import ControllerSpec, Limits
from chatgpt_apiserver.controllers.mock import MockController
from chatgpt_apiserver.errors import ApiError
from chatgpt_apiserver.scheduling.balancer import SmoothWeighted
from chatgpt_apiserver.scheduling.scheduler import QueuePolicy, RetryBudget, Scheduler
from chatgpt_apiserver.state import LocalStore, Policy


def scheduler(max_wait: float = 2.0, max_size: int = 10, names: tuple[str, ...] = ("only",),
              models: dict[str, str] | None = None, **limits: float) -> Scheduler:
    controllers = [MockController(ControllerSpec(name, "mock", 1, {models[name]: models[name]} if models else None,
                                                 limits=Limits(**limits)))  # type: ignore[arg-type]
                   for name in names]
    store = LocalStore(time.monotonic)
    store.configure(controllers, Policy(breaker_failures=1, base_ejection=30))
    return Scheduler(controllers, store, SmoothWeighted(), QueuePolicy(max_wait, max_size), time.monotonic)


def test_waiters_are_admitted_first_in_first_out() -> None:
    async def run() -> list[int]:
        s = scheduler(max_concurrency=1)
        first = await s.acquire("m", 1)
        order: list[int] = []

        async def wait(index: int) -> None:
            lease = await s.acquire("m", 1)
            order.append(index)
            await asyncio.sleep(0.01)
            lease.release(1)

        tasks = [asyncio.create_task(wait(i)) for i in range(5)]
        await asyncio.sleep(0.05)
        assert s.queue_length == 5
        first.release(1)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]


def test_queue_size_bound_answers_429_at_once() -> None:
    async def run() -> None:
        s = scheduler(max_size=2, max_concurrency=1)
        held = await s.acquire("m", 1)

        async def use() -> None:
            (await s.acquire("m", 1)).release(1)

        waiting = [asyncio.create_task(use()) for _ in range(2)]
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(ApiError) as caught:
            await s.acquire("m", 1)
        assert time.monotonic() - started < 0.1
        assert caught.value.status == 429 and "queue is full" in caught.value.message
        held.release(1)
        await asyncio.gather(*waiting)

    asyncio.run(run())


def test_wait_bound_and_retry_after_from_the_earliest_refill() -> None:
    async def run() -> None:
        s = scheduler(max_wait=0.2, rpm=30, request_burst=1)
        (await s.acquire("m", 1)).release(1)
        with pytest.raises(ApiError) as caught:
            await s.acquire("m", 1)  # the next request fits in 2 s, longer than the wait bound
        assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "2"

    asyncio.run(run())


def test_a_cancelled_waiter_leaves_the_queue_and_leaks_nothing() -> None:
    async def run() -> None:
        s = scheduler(max_concurrency=1)
        held = await s.acquire("m", 1)
        waiter = asyncio.create_task(s.acquire("m", 1))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert s.queue_length == 0
        held.release(1)
        assert s.store.in_flight(s.controllers[0]) == 0

    asyncio.run(run())


def test_retry_budget() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.5, per_second=1, clock=lambda: now[0])
    spent = sum(budget.withdraw() for _ in range(20))
    assert spent == 10  # the initial allowance
    budget.deposit()
    budget.deposit()
    assert budget.withdraw() and not budget.withdraw()
    now[0] = 3.0
    assert sum(budget.withdraw() for _ in range(5)) == 3


def test_a_waiter_for_a_full_controller_does_not_hold_up_one_for_another() -> None:
    async def run() -> None:
        s = scheduler(names=("a", "b"), models={"a": "ma", "b": "mb"}, max_concurrency=1)
        held_a = await s.acquire("ma", 1)
        held_b = await s.acquire("mb", 1)
        waiting_a = asyncio.create_task(s.acquire("ma", 1))
        await asyncio.sleep(0.01)
        waiting_b = asyncio.create_task(s.acquire("mb", 1))
        await asyncio.sleep(0.01)
        held_b.release(1)  # b frees up first: its waiter goes, though a's waiter came earlier
        lease_b = await asyncio.wait_for(waiting_b, 1)
        assert lease_b.controller.name == "b" and not waiting_a.done()
        held_a.release(1)
        assert (await asyncio.wait_for(waiting_a, 1)).controller.name == "a"

    asyncio.run(run())


def test_every_candidate_ejected_or_disabled_is_a_503_with_the_earliest_probe() -> None:
    async def run() -> None:
        s = scheduler(names=("a", "b"))
        a, b = s.controllers
        s.store.failed(a, "m", False, True)  # breaker_failures=1: ejected for 30 s
        s.store.disable(b, "*", float("inf"), "the upstream rejected the key (401)")
        started = time.monotonic()
        with pytest.raises(ApiError) as caught:
            await s.acquire("m", 1)
        assert time.monotonic() - started < 0.5  # answered at once, not after the queue wait
        error = caught.value
        assert error.status == 503 and error.code == "upstream_unavailable"
        assert error.headers["Retry-After"] == "30"
        assert (await s.acquire("other-model", 1)).controller is a  # the pair, not the controller, is ejected

    asyncio.run(run())


def test_a_cooling_controller_is_a_wait_not_a_503() -> None:
    async def run() -> None:
        s = scheduler(names=("a", "b"), max_wait=2.0)
        a, b = s.controllers
        s.store.disable(b, "*", float("inf"), "bad key")
        s.store.rate_limited(a, 0.2)
        started = time.monotonic()
        lease = await s.acquire("m", 1)
        assert lease.controller is a and 0.15 < time.monotonic() - started < 1.5

    asyncio.run(run())
