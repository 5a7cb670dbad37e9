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
    assert names(balancer, pool[1:], 6) == "BCBCBC"  # A cooling: B and C share evenly, in turn
    # A back: the order is the one a fresh balancer gives, so the absence left no skew behind.
    assert names(balancer, pool, 14) == "AABACAA" * 2


def test_weighted_random_follows_weights() -> None:
    counts = Counter(names(WeightedRandom(random.Random(42)), controllers(3, 1), 4000))
    assert 2800 < counts["A"] < 3200 and counts["A"] + counts["B"] == 4000


class Scripted(random.Random):
    """A random source that returns the given values, in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_weighted_random_maps_weights_to_shares_of_the_draw() -> None:
    # Weights 2, 1, 1: A takes draws in [0, 0.5), B in [0.5, 0.75), C in [0.75, 1), in the candidates' order.
    balancer = WeightedRandom(Scripted(0.0, 0.49, 0.5, 0.74, 0.75, 0.999))
    assert names(balancer, controllers(2, 1, 1), 6) == "AABBCC"


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
