"""Pool types, tested exactly with injected randomness."""

from __future__ import annotations

import random
from collections import Counter

from chatgpt_apiserver.config.controllers import ControllerSpec, Limits
from chatgpt_apiserver.controllers.mock import MockController
from chatgpt_apiserver.scheduling.balancer import SmoothWeighted, WeightedRandom, make_balancer
from chatgpt_apiserver.state import LocalStore, Policy


def controllers(*weights: int) -> list[MockController]:
    return [MockController(ControllerSpec(chr(ord("A") + i), "mock", w, None)) for i, w in enumerate(weights)]


def names(balancer: SmoothWeighted | WeightedRandom, pool: list[MockController], count: int) -> str:
    return "".join(balancer.pick(pool).name for _ in range(count))  # type: ignore[union-attr]


def test_smooth_weighted_round_robin_order() -> None:
    pool = controllers(5, 1)
    assert names(SmoothWeighted(), pool, 12) == "AAABAA" * 2


def test_smooth_weighted_spreads_heavier_weights() -> None:
    pool = controllers(4, 2, 1)
    assert names(SmoothWeighted(), pool, 7) == "ABACABA"
    assert Counter(names(SmoothWeighted(), pool, 700)) == {"A": 400, "B": 200, "C": 100}


def test_smooth_weighted_equal_weights_alternate() -> None:
    assert names(SmoothWeighted(), controllers(1, 1, 1), 6) == "ABCABC"


def test_smooth_weighted_on_a_subset_skips_the_missing() -> None:
    pool = controllers(5, 1, 1)
    balancer = SmoothWeighted()
    assert all(balancer.pick(pool[1:]).name in "BC" for _ in range(10))  # type: ignore[union-attr]


def test_weighted_random_follows_weights() -> None:
    counts = Counter(names(WeightedRandom(random.Random(42)), controllers(3, 1), 4000))
    assert 2800 < counts["A"] < 3200 and counts["A"] + counts["B"] == 4000


def test_weighted_random_is_deterministic_with_a_seed() -> None:
    pool = controllers(2, 1, 1)
    assert names(WeightedRandom(random.Random(7)), pool, 20) == names(WeightedRandom(random.Random(7)), pool, 20)


def test_empty_and_single() -> None:
    for balancer in (SmoothWeighted(), WeightedRandom(random.Random(1))):
        assert balancer.pick([]) is None
        [only] = controllers(3)
        assert balancer.pick([only]) is only
    assert isinstance(make_balancer("random", LocalStore()), WeightedRandom)
    assert isinstance(make_balancer("balanced", LocalStore()), SmoothWeighted)


def test_least_busy_and_capacity_read_the_store() -> None:
    pool = [MockController(ControllerSpec(name, "mock", 1, None, limits=Limits(rpm=60, max_concurrency=4)))
            for name in "AB"]
    store = LocalStore(lambda: 0.0)
    store.configure(pool, Policy())
    for _ in range(2):
        assert store.admit_now(pool[0], "m", 1).ok  # A: two in flight, two requests spent
    assert make_balancer("least_busy", store).pick(pool) is pool[1]
    assert make_balancer("capacity", store).pick(pool) is pool[1]
    for _ in range(3):
        assert store.admit_now(pool[1], "m", 1).ok  # B now busier and emptier than A
    assert make_balancer("least_busy", store).pick(pool) is pool[0]
    assert make_balancer("capacity", store).pick(pool) is pool[0]
