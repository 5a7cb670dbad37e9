"""Pool types: which eligible controller gets the next attempt."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Optional

from ..controllers import Controller
from ..state import ControllerStore


class Balancer(ABC):
    """Chooses one controller from the eligible candidates (already filtered by model and state)."""

    @abstractmethod
    def pick(self, candidates: Sequence[Controller]) -> Optional[Controller]:
        """The next controller to try, or None when there are no candidates."""


class SmoothWeighted(Balancer):
    """nginx's smooth weighted round robin: weights [5, 1] give A A A B A A, again and again."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, candidates: Sequence[Controller]) -> Optional[Controller]:
        if len(candidates) == 1:
            return candidates[0]
        best: Optional[Controller] = None
        best_score = 0
        total = 0
        current = self._current
        for controller in candidates:
            score = current.get(controller.name, 0) + controller.weight
            current[controller.name] = score
            total += controller.weight
            if best is None or score > best_score:
                best, best_score = controller, score
        if best is not None:
            current[best.name] = best_score - total
        return best

    def forget(self, names: set[str]) -> None:
        """Drop the scores of controllers that no longer exist."""
        for name in names:
            self._current.pop(name, None)


class WeightedRandom(Balancer):
    """Each candidate with probability weight / total weight."""

    def __init__(self, rng: Optional[random.Random] = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography

    def pick(self, candidates: Sequence[Controller]) -> Optional[Controller]:
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        return self._rng.choices(candidates, weights=[c.weight for c in candidates])[0]


class LeastBusy(Balancer):
    """Fewest requests in flight (over every instance, as the store knows them) per unit of weight; ties go
    round robin."""

    def __init__(self, store: ControllerStore) -> None:
        self._store = store
        self._turn = 0

    def pick(self, candidates: Sequence[Controller]) -> Optional[Controller]:
        if not candidates:
            return None
        self._turn += 1
        count = len(candidates)
        order = [candidates[(self._turn + i) % count] for i in range(count)]
        in_flight = self._store.in_flight
        return min(order, key=lambda c: (in_flight(c) + 1) / c.weight)


class MostCapacity(Balancer):
    """The most headroom against its own limits (rpm, tpm, concurrency), times weight, as the store knows
    it; ties round robin."""

    def __init__(self, store: ControllerStore) -> None:
        self._store = store
        self._turn = 0

    def pick(self, candidates: Sequence[Controller]) -> Optional[Controller]:
        if not candidates:
            return None
        self._turn += 1
        count = len(candidates)
        order = [candidates[(self._turn + i) % count] for i in range(count)]
        headroom = self._store.headroom
        return max(order, key=lambda c: headroom(c) * c.weight)


def make_balancer(pool_type: str, store: ControllerStore, rng: Optional[random.Random] = None) -> Balancer:
    """The balancer for a `pool.type` value (validated at start-up)."""
    if pool_type == "random":
        return WeightedRandom(rng)
    if pool_type == "least_busy":
        return LeastBusy(store)
    if pool_type == "capacity":
        return MostCapacity(store)
    return SmoothWeighted()
