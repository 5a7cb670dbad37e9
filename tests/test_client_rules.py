"""One table of events and expected states for client state (clients/rules.py, C1-C5), run against the local
and the Redis store with the same injected clock, so every wait is exact."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import pytest

from chatgpt_apiserver.auth import key_digest
from chatgpt_apiserver.clients.fallback import FallbackClientStore
from chatgpt_apiserver.clients.local import LocalClientStore
from chatgpt_apiserver.clients.redis import RedisClientStore
from chatgpt_apiserver.clients.registry import FOUND_KEPT, Client, Registry, plan_for
from chatgpt_apiserver.clients.rules import Left, follows, left_of, period_of, replaces
from chatgpt_apiserver.clients.store import (
    ADMITTED,
    MAX_LABELS,
    Charge,
    ClientAdmission,
    ClientStore,
    ClientTicket,
    Period,
)
from chatgpt_apiserver.config.clients import Budget, ClientSpec, RateLimit
from chatgpt_apiserver.state.redis_link import RedisLink

from .redis_server import RedisServer

INF = math.inf
NOV, DEC = Period("2026-11", 1_796_083_200.0), Period("2026-12", 1_798_761_600.0)


def spec(**fields: Any) -> ClientSpec:
    return ClientSpec("team", b"\0" * 32, **fields)


@dataclass
class Case:
    """A client and a list of steps: (time, operation, arguments..., expected)."""

    name: str
    client: ClientSpec
    steps: list[tuple[Any, ...]]


# Operations:
#   ("admit", model, tokens, period, (ok, reason, wait[, levels]))   levels: {field: level} after the step
#   ("settle", admission number, Charge)   the n-th successful admission of the case ends
#   ("view", period, {"in_flight": n, "spent": (tokens, nano), "levels": {...}, "usage": {label: row}})
CASES = [
    Case("C1 request and token buckets refill, take all or nothing", spec(limits=RateLimit(rpm=2, tpm=100)), [
        (0.0, "admit", "m", 30, NOV, (True, "ok", 0, {"r": 1, "t": 70})),
        (0.0, "admit", "m", 30, NOV, (True, "ok", 0, {"r": 0, "t": 40})),
        (0.0, "admit", "m", 30, NOV, (False, "requests", 30.0, {"r": 0, "t": 40})),  # nothing taken
        (0.0, "view", NOV, {"in_flight": 2}),
        (15.0, "admit", "m", 70, NOV, (False, "requests", 15.0)),
        (30.0, "admit", "m", 70, NOV, (True, "ok", 0, {"r": 0, "t": 40 + 50 - 70})),
        (30.0, "view", NOV, {"levels": {"r": 0, "t": 20}}),
        (1000.0, "view", NOV, {"levels": {"r": 2, "t": 100}}),  # never above the capacity
    ]),
    Case("C1 a model limit is a bucket of its own; other models do not touch it",
         spec(limits=RateLimit(rpm=60), model_limits={"gpt-4o": RateLimit(rpm=1, tpm=1000)}), [
        (0.0, "admit", "gpt-4o", 600, NOV, (True, "ok", 0, {"r": 59, "m:gpt-4o:r": 0, "m:gpt-4o:t": 400})),
        (0.0, "admit", "gpt-4o", 900, NOV, (False, "model_requests", 60.0)),  # tokens too, but in 30 s
        (0.0, "admit", "gpt-4o-mini", 10_000, NOV, (True, "ok", 0, {"r": 58})),
        (30.0, "admit", "gpt-4o", 900, NOV, (False, "model_requests", 30.0)),
        (60.0, "admit", "gpt-4o", 900, NOV, (True, "ok", 0, {"m:gpt-4o:r": 0, "m:gpt-4o:t": 100})),
    ]),
    Case("C4 the wait is the longest of the buckets that refuse", spec(limits=RateLimit(rpm=1, tpm=60)), [
        (0.0, "admit", "m", 60, NOV, (True, "ok", 0)),
        (0.0, "admit", "m", 10, NOV, (False, "requests", 60.0)),
        (50.0, "admit", "m", 55, NOV, (False, "requests", 10.0)),
        (59.0, "admit", "m", 60, NOV, (False, "requests", 1.0)),
        (60.0, "admit", "m", 600, NOV, (True, "ok", 0, {"r": 0, "t": -540})),  # more than the capacity: all of it
        (60.0, "admit", "m", 1, NOV, (False, "requests", 541.0)),  # the tokens take longer than the request
        (61.0, "admit", "m", 1, NOV, (False, "requests", 540.0)),
    ]),
    Case("C2 concurrency: a settled request frees its slot", spec(max_concurrency=2), [
        (0.0, "admit", "m", 1, NOV, (True, "ok", 0)),
        (0.0, "admit", "m", 1, NOV, (True, "ok", 0)),
        (0.0, "admit", "m", 1, NOV, (False, "busy", INF)),
        (0.0, "settle", 0, Charge.of("m", used=1)),
        (0.0, "admit", "m", 1, NOV, (True, "ok", 0)),
        (0.0, "view", NOV, {"in_flight": 2}),
    ]),
    Case("C3 a token budget runs out once spent; requests in flight still settle; the next period is fresh",
         spec(budget=Budget("month", tokens=100)), [
        (0.0, "admit", "m", 10, NOV, (True, "ok", 0)),
        (0.0, "admit", "m", 10, NOV, (True, "ok", 0)),
        (0.0, "settle", 0, Charge.of("m", used=80, tokens=80, prompt=50, completion=30)),
        (0.0, "admit", "m", 10, NOV, (True, "ok", 0)),
        (0.0, "settle", 1, Charge.of("m", used=40, tokens=40, prompt=20, completion=20)),
        (0.0, "view", NOV, {"spent": (120, 0)}),
        (0.0, "admit", "m", 10, NOV, (False, "budget", 0)),
        (0.0, "settle", 2, Charge.of("m", used=5, tokens=5, prompt=5)),  # admitted before: it still counts
        (0.0, "view", NOV, {"spent": (125, 0), "in_flight": 0}),
        (1.0, "admit", "m", 10, DEC, (True, "ok", 0)),
        (1.0, "view", DEC, {"spent": (0, 0), "usage": {"m": [3, 0, 75, 0, 50, 0]}}),
    ]),
    Case("C3 a dollar budget; spending of an ended period does not count in the new one",
         spec(budget=Budget("month", usd=1.0)), [
        (0.0, "admit", "m", 10, NOV, (True, "ok", 0)),
        (0.0, "admit", "m", 10, NOV, (True, "ok", 0)),
        (0.0, "settle", 0, Charge.of("m", used=10, tokens=10, nano=999_999_999)),
        (0.0, "admit", "m", 10, NOV, (True, "ok", 0)),
        (0.0, "settle", 2, Charge.of("m", used=10, tokens=10, nano=1)),
        (0.0, "admit", "m", 10, NOV, (False, "budget", 0)),
        (1.0, "admit", "m", 10, DEC, (True, "ok", 0)),
        (1.0, "settle", 1, Charge.of("m", used=10, tokens=10, nano=500_000_000)),  # admitted in November
        (1.0, "view", DEC, {"spent": (0, 0)}),
        (1.0, "admit", "m", 10, DEC, (True, "ok", 0)),
    ]),
    Case("C5 settling gives back what was reserved and not used; unknown usage keeps the reservation",
         spec(limits=RateLimit(tpm=600)), [
        (0.0, "admit", "m", 500, NOV, (True, "ok", 0, {"t": 100})),
        (0.0, "admit", "m", 100, NOV, (True, "ok", 0, {"t": 0})),
        (0.0, "settle", 0, Charge.of("m", used=200, tokens=200)),
        (0.0, "view", NOV, {"levels": {"t": 300}}),
        (0.0, "settle", 1, Charge.of("m", used=None)),
        (0.0, "view", NOV, {"levels": {"t": 300}, "in_flight": 0}),
        (0.0, "admit", "m", 300, NOV, (True, "ok", 0, {"t": 0})),
        (0.0, "settle", 2, Charge.of("m", used=1000, tokens=1000)),  # used more than reserved: lower still
        (0.0, "view", NOV, {"levels": {"t": -700}}),
        (10.0, "admit", "m", 1, NOV, (False, "tokens", 601.0 / 10)),
    ]),
    Case("C5 usage rows per model, past MAX_LABELS under other", spec(), [
        *[(0.0, "admit", f"model-{i}", 1, NOV, (True, "ok", 0)) for i in range(MAX_LABELS + 2)],
        *[(0.0, "settle", i, Charge.of(f"model-{i}", used=1, errors=i % 2, prompt=2, cached=1, completion=3,
                                    nano=7)) for i in range(MAX_LABELS + 2)],
        (0.0, "view", NOV, {"usage": {"model-0": [1, 0, 2, 1, 3, 7], "model-1": [1, 1, 2, 1, 3, 7],
                                       "other": [3, 2, 6, 3, 9, 21]}, "rows": MAX_LABELS}),
    ]),
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def make_store(kind: str, clock: Clock, redis_url: str) -> AsyncIterator[ClientStore]:
    if kind == "local":
        yield LocalClientStore(clock)
        return
    link = RedisLink(redis_url, f"crules-{uuid.uuid4().hex[:8]}", 2.0)
    store = RedisClientStore(link, wall=lambda: NOV.end - 10, redis_clock=clock)
    await link.start()
    try:
        yield store
    finally:
        await link.close()


async def run_case(case: Case, store: ClientStore, clock: Clock) -> None:
    start = clock.now
    tickets: list[ClientTicket] = []
    store.configure([plan_for(case.client)])
    for index, step in enumerate(case.steps):
        at, op, *args = step
        clock.now = start + at
        where = f"{case.name}, step {index} ({op} at {at})"
        if op == "admit":
            model, tokens, period, expected = args
            plan = plan_for(case.client, model)
            admission = await store.admit(plan, tokens, period)
            ok, reason, wait, *levels = expected
            assert (admission.ok, admission.reason) == (ok, reason), where
            if math.isinf(wait):
                assert math.isinf(admission.wait), where
            else:
                assert admission.wait == pytest.approx(wait, abs=0.002), where
            if levels:
                got = {rule.field: level for rule, level in zip(plan.buckets, admission.levels, strict=True)}
                for field, want in levels[0].items():
                    assert got[field] == pytest.approx(want, abs=0.01), f"{where}: {field}"
            if admission.ok:
                tickets.append(ClientTicket(plan, tokens, period, admission.store))
        elif op == "settle":
            number, charge = args
            store.settle(tickets[number], charge)
        elif op == "view":
            period, expected = args
            plan = plan_for(case.client)
            plans = [plan_for(case.client, model) for model in case.client.model_limits] or [plan]
            view = (await store.views([plans[0]], {plan.name: period}))[plan.name]
            for key, want in expected.items():
                if key == "spent":
                    assert (view.spent_tokens, view.spent_nano) == want, where
                elif key == "levels":
                    for field, level in want.items():
                        assert view.levels[field] == pytest.approx(level, abs=0.01), f"{where}: {field}"
                elif key == "usage":
                    for label, row in want.items():
                        assert view.usage[label] == row, f"{where}: {label}"
                elif key == "rows":
                    assert len(view.usage) == want, where
                else:
                    assert getattr(view, key) == want, f"{where}: {key}"
        else:
            raise AssertionError(op)


@pytest.mark.parametrize("kind", ["local", "redis"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_client_rules(case: Case, kind: str, shared_redis: RedisServer) -> None:
    async def run() -> None:
        clock = Clock()
        async with make_store(kind, clock, shared_redis.url) as store:
            await run_case(case, store, clock)
            await asyncio.sleep(0.05)  # settlements are sent without waiting: let the last ones land

    asyncio.run(run())


def test_headers_report_the_bucket_with_the_least_left() -> None:
    plan = plan_for(spec(limits=RateLimit(rpm=600, tpm=1000), model_limits={"m": RateLimit(rpm=6)}), "m")
    fields = [rule.field for rule in plan.buckets]
    assert fields == ["r", "m:m:r", "t"]
    requests = left_of(plan.buckets, (500.0, 2.5, 250.0), True)
    assert requests == Left(6, 2, pytest.approx(35.0))  # the model's: 2 left; 3.5 requests at 0.1/s to full
    assert left_of(plan.buckets, (1.0, 5.0, -20.5), False) == Left(1000, 0, pytest.approx(61.23, abs=0.01))
    assert left_of(plan_for(spec()).buckets, (), True) is None


@pytest.mark.parametrize(("kind", "wall", "name", "end"), [
    ("month", 1_796_083_199.0, "2026-11", "2026-12-01"),
    ("month", 1_796_083_200.0, "2026-12", "2027-01-01"),
    ("day", 1_796_083_199.5, "2026-11-30", "2026-12-01"),
    ("month", 1_707_955_200.0, "2024-02", "2024-03-01"),  # a leap year's February
])
def test_budget_periods_are_utc_calendar_periods(kind: str, wall: float, name: str, end: str) -> None:
    from datetime import datetime
    got_name, got_end = period_of(kind, wall)
    assert got_name == name
    assert datetime.fromtimestamp(got_end, UTC).strftime("%Y-%m-%d %H:%M:%S") == f"{end} 00:00:00"


def test_an_admission_made_while_redis_is_away_leaves_the_local_stores_shared_one_alone() -> None:
    # A client with no limits is admitted by one shared, never-changed admission. The fallback store answers
    # for the local store while Redis is away and names it in the admission: in an admission of its own.
    async def run() -> None:
        local = LocalClientStore(Clock())
        link = RedisLink("redis://127.0.0.1:1/0", "crules-away", 0.2)  # never started
        fallback = FallbackClientStore(RedisClientStore(link), local, "local")
        link.went_down(ConnectionError("refused"))  # Redis is away
        plan = plan_for(spec())
        fallback.configure([plan])
        away = await fallback.admit(plan, 1, Period("", 0.0))
        assert away.ok and away.store is local and away is not ADMITTED
        plain = local.admit_now(plan, 1, Period("", 0.0))
        assert plain.ok and plain.store is None and ClientAdmission(True) == ADMITTED
        assert local.held("team") == 2
        fallback.settle(ClientTicket(plan, 1, Period("", 0.0), away.store, "m"), Charge.of("m", used=1, prompt=1))
        assert local.held("team") == 1 and fallback.pending  # carried over to Redis when it is back

    asyncio.run(run())


def test_a_short_usage_row_from_an_older_state_file_is_padded_and_keeps_counting() -> None:
    store = LocalClientStore(Clock())
    store.restore({"team": {"usage": {"m": [1, 0, 2, 0, 3]}}}, 0.0)
    plan = plan_for(spec())
    store.configure([plan])
    ticket = ClientTicket(plan, 1, Period("", 0.0), None, "m")
    assert store.admit_now(plan, 1, Period("", 0.0)).ok
    store.settle(ticket, Charge.of("m", used=4, tokens=4, prompt=1, completion=3, nano=7))
    assert store.clients["team"].usage == {"m": [2, 0, 3, 0, 6, 7]}


@pytest.mark.parametrize("period,held,replaced,opened", [
    ("2026-12-06", "", True, True),  # the first period
    ("2026-12-07", "2026-12-06", True, True),  # the next day
    ("2026-12-05", "2026-12-06", False, False),  # a day that has ended: closed
    ("2027-01", "2026-12", True, True),
    ("2026-12", "2026-12-06", True, False),  # a reload made the day budget monthly
    ("2026-12-06", "2026-12", True, False),  # and back: a ticket of the other kind opens nothing
    ("2026-12", "2026-12", False, False),
])
def test_budget_periods_of_one_kind_follow_in_time_and_a_changed_kind_replaces(period: str, held: str,
                                                                                replaced: bool, opened: bool) -> None:
    assert (replaces(period, held), follows(period, held)) == (replaced, opened)


def test_a_found_key_is_remembered_by_its_header_up_to_a_bound_and_an_unknown_one_never() -> None:
    """The registry remembers an `Authorization` header it found a client for (no SHA-256 the next time), at
    most FOUND_KEPT of them; a reload builds a new registry, so a removed key is not found from memory."""
    team = Client(ClientSpec("team", key_digest("sk-team-key"), key_source="clients"), None)
    registry = Registry([team])
    assert registry.find("Bearer sk-team-key") is team and registry.find("Bearer sk-team-key") is team
    assert registry.find("Bearer sk-other") is None and registry.find(None) is None
    assert list(registry._found) == ["Bearer sk-team-key"]
    for spaces in range(FOUND_KEPT + 10):  # the same key, written as many different headers
        assert registry.find("Bearer sk-team-key" + " " * spaces) is team
        assert len(registry._found) <= FOUND_KEPT
    assert Registry([]).find("Bearer sk-team-key") is None  # (after a reload that removed it)
