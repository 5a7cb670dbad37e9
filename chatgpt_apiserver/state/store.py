"""The controller-state store: one interface, with local, Redis and fallback implementations side by side.

A store holds, per controller: its request and token buckets, its in-flight slots, a cooldown (after a
429), disables (out of quota, a rejected key, a missing deployment) and the circuit breaker. The rules
that change them are written once, in `rules.py`; `local.py` runs them in Python, `redis.py` in Lua,
and one conformance table (tests/test_store_rules.py) runs against both. The scheduler only ever sees
this interface: it asks for admission, releases leases, records outcomes, and reads views.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ..controllers import Controller
    from ..controllers.rate_headers import RateHeaders
    from .rules import Policy

WHOLE = "*"  # the breaker or disable scope that covers every model of a controller

# Why an admission was refused; also the state names of the views.
OK, DISABLED, COOLING, EJECTED, PROBING, BUSY, REQUESTS, TOKENS = (
    "ok", "disabled", "cooling", "ejected", "probing", "busy", "requests", "tokens")
# Refusals that mean "this controller is failing or switched off", as opposed to "it is full right now".
UNAVAILABLE = frozenset((DISABLED, EJECTED))


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "may this controller take the request now?"."""

    ok: bool
    wait: float = 0.0  # seconds until it could; inf when only a release can free a slot
    reason: str = OK
    probe: bool = False  # admitted as the half-open breaker's one probe
    store: Optional[ControllerStore] = None  # the store that admitted it, when a fallback store chose one


ADMITTED = Admission(True)


@dataclass(frozen=True, slots=True)
class Health:
    """Whether a controller can serve a model now, and if not, for how long (from what the store knows)."""

    status: str  # ok, disabled, cooling, ejected, probing
    wait: float = 0.0
    reason: str = ""  # why it is disabled


HEALTHY = Health(OK)


@dataclass
class BucketView:
    """A bucket's level against its capacity, and its refill per minute."""

    level: float
    capacity: float
    per_minute: float


@dataclass
class ControllerView:
    """What the store holds for one controller, for the admin view, metrics and the `capacity` pool."""

    status: str = OK
    wait: float = 0.0  # seconds until a cooldown, disable or ejection ends (inf: until a reload)
    disabled_reason: str = ""
    in_flight: int = 0  # every instance's
    buckets: dict[str, BucketView] = field(default_factory=dict)
    consecutive_failures: int = 0
    ejected_models: dict[str, float] = field(default_factory=dict)  # model -> seconds left
    disabled_models: dict[str, str] = field(default_factory=dict)  # model -> reason

    def headroom(self, max_concurrency: Optional[int]) -> float:
        """The tightest free fraction of the limits, 0..1 (1 when nothing is limited)."""
        fractions = [1.0]
        for bucket in self.buckets.values():
            fractions.append(max(0.0, bucket.level) / bucket.capacity if bucket.capacity else 0.0)
        if max_concurrency:
            fractions.append(max(0.0, 1 - self.in_flight / max_concurrency))
        return min(fractions)

    def as_dict(self) -> dict[str, Any]:
        """The admin view's JSON shape."""
        view: dict[str, Any] = {
            "state": self.status, "in_flight": self.in_flight,
            "buckets": {name: {"level": round(b.level, 2), "capacity": round(b.capacity, 2),
                               "per_minute": round(b.per_minute, 2)} for name, b in self.buckets.items()},
            "consecutive_failures": self.consecutive_failures,
        }
        if self.status == COOLING:
            view["cooling_for"] = round(self.wait, 3)
        if self.status == DISABLED:
            view["disabled_reason"] = self.disabled_reason
            view["disabled_for"] = None if math.isinf(self.wait) else round(self.wait, 3)
        if self.status == EJECTED:
            view["ejected_for"] = round(self.wait, 3)
        if self.ejected_models:
            view["ejected_models"] = {m: round(s, 3) for m, s in sorted(self.ejected_models.items())}
        if self.disabled_models:
            view["disabled_models"] = dict(sorted(self.disabled_models.items()))
        return view


@dataclass(slots=True)
class Ticket:
    """What a store needs to end one admitted request: it travels with the scheduler's lease."""

    controller: Controller
    model: str
    reserved: float
    probe: bool = False
    store: Optional[ControllerStore] = None  # the store that admitted it (the fallback store switches)


def scope_of(controller: Controller, model: str) -> str:
    """The breaker and disable scope of `model` on `controller`: the model itself while it is one of the
    controller's known models (declared, discovered, or among the first few seen); else "other". A client
    cannot grow a store's scopes by naming made-up models."""
    return model if model == WHOLE or not model else controller.stats.label(model)


class StoreUnavailable(Exception):
    """The store cannot answer (Redis is away); the fallback store decides what that means."""


class ControllerStore(ABC):
    """Per-controller scheduling state, behind one interface (see the module docstring)."""

    #: Seconds between retries for a waiter whose controllers are all busy, when a slot freed by another
    #: instance cannot wake it. None: a release in this process is the only thing that frees a slot.
    poll_interval: Optional[float] = None

    @property
    def admitting(self) -> bool:
        """Whether the store can admit requests at all now (False: every admission raises StoreUnavailable)."""
        return True

    @abstractmethod
    def configure(self, controllers: Sequence[Controller], policy: Policy) -> None:
        """Take the current controllers (after start or a reload) and the breaker policy."""

    async def start(self) -> None:
        """Connect and start background work."""

    async def close(self) -> None:
        """Stop background work and disconnect."""

    @abstractmethod
    async def admit(self, controller: Controller, model: str, tokens: float) -> Admission:
        """Take one request, `tokens` and a slot from `controller` if every limit has room, atomically."""

    @abstractmethod
    def release(self, ticket: Ticket, used_tokens: Optional[float], rate: Optional[RateHeaders],
                rate_age: float) -> None:
        """Free the slot, settle the tokens against what was used (None: keep the reservation), and
        believe the upstream's rate-limit headers, seen `rate_age` seconds ago."""

    @abstractmethod
    def succeeded(self, controller: Controller, model: str) -> None:
        """A usable answer: the breaker of the pair (and of the controller) closes."""

    @abstractmethod
    def failed(self, controller: Controller, model: str, whole: bool, may_eject: bool) -> float:
        """A 5xx, timeout or malformed answer (`whole`: a connection failure, which blames every model).
        Returns the ejection it caused in seconds (0: none, or not known yet)."""

    @abstractmethod
    def rate_limited(self, controller: Controller, seconds: float) -> None:
        """A 429: cool the controller down for `seconds` (a cooldown is extended, never shortened)."""

    @abstractmethod
    def disable(self, controller: Controller, model: str, seconds: float, reason: str) -> None:
        """Stop using the controller (`model` or WHOLE) for `seconds` (inf: until a reload fixes it)."""

    @abstractmethod
    def clear_disables(self, controller: Controller) -> None:
        """A reload: lift the disables that only a reload lifts (a rejected key or missing deployment)."""

    @abstractmethod
    def health(self, controller: Controller, model: str) -> Health:
        """Disabled, cooling, ejected or probing for `model`, from what this process knows (no I/O)."""

    @abstractmethod
    def in_flight(self, controller: Controller) -> int:
        """Requests in flight on `controller`, every instance's, as far as this process knows."""

    @abstractmethod
    def held(self, controller: Controller) -> int:
        """Requests in flight on `controller` that this process admitted."""

    @abstractmethod
    def headroom(self, controller: Controller) -> float:
        """The tightest free fraction of the controller's limits, 0..1, as far as this process knows."""

    @abstractmethod
    async def views(self, controllers: Sequence[Controller]) -> dict[str, ControllerView]:
        """The state of each controller, read from the store itself (the shared truth with Redis)."""
