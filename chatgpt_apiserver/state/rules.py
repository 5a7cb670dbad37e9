"""The rules of controller state, written once. `local.py` runs them in Python, `redis_scripts.py` in Lua.

tests/test_store_rules.py holds one table of events and expected states and runs it against both stores.

R1 Buckets. A bucket refills continuously at `rate` per second up to `capacity`. An admission needs
   `level >= min(amount, capacity)` (the request bucket: amount 1) and takes `min(amount, capacity)`: a
   client's huge `max_tokens` reserves at most a full bucket. Settling adds `min(reserved, capacity) -
   used`, capped at the capacity; the level goes below zero only by tokens really used.
R2 Corrections from the upstream's headers. A limit `L` below the capacity lowers the capacity to `L`,
   scales the rate by `L / capacity` and caps the level at `L` (a limit never rises). A remaining
   count `R` seen `age` seconds ago caps the level at `R + age * rate`.
R3 Concurrency. The slots in use (over every live instance) must be below `max_concurrency`. A slot
   held by an instance whose heartbeat is older than `heartbeat_ttl` is freed.
R4 Cooldown. A 429 cools the controller until `max(cooling_until, now + seconds)`: a cooldown is
   extended, never shortened. It also empties the request bucket (`level = min(level, 0)`).
R5 Disables, per scope (the whole controller, or one model), keyed by a fingerprint of the
   controller's credentials: `until = max(until, now + seconds)`. A rotated key is a fresh controller;
   a reload lifts the disables that last until a reload (infinite ones).
R6 Breaker, per scope: (controller, model) for 5xx, timeouts and malformed answers; the whole
   controller for connection failures (refused, TLS, DNS). A failure adds one to `fails`. When `fails`
   reaches `breaker_failures`, or the failure ends a probe, and ejecting is allowed, `ejections` grows by
   one and the scope is ejected for `min(max_ejection, base_ejection * 2 ** (ejections - 1))`. A failure
   while the scope is ejected only counts (requests admitted before are still finishing). A usable
   answer clears the model's scope and the whole controller's.
R7 Half-open. Once an ejection has run out, the next admission in that scope is the probe; until the
   probe's outcome (or `probe_timeout`), other admissions in that scope are refused as `probing`. A
   probe released without an outcome ends the probing.
R8 Refusals, in this order, each with its wait: disabled (whole, then model), cooling, ejected (whole,
   then model), probing, busy (inf: only a release frees a slot), requests `(1 - level) / rate`, tokens
   `(min(want, capacity) - level) / rate`.
R9 Whether ejecting is allowed is the scheduler's call: never eject the last usable controller for
   the model (scheduling/outcomes.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .store import EJECTED, PROBING

FOREVER = math.inf


@dataclass(frozen=True)
class Policy:
    """The breaker's settings (from the config) and the liveness timings of shared state."""

    breaker_failures: int = 5
    base_ejection: float = 5.0
    max_ejection: float = 300.0
    heartbeat_ttl: float = 10.0

    @property
    def probe_timeout(self) -> float:
        """How long a probe may run before another request may probe instead."""
        return max(5.0, self.base_ejection)

    def ejection(self, ejections: int) -> float:
        """R6: the length of the `ejections`-th ejection in a row."""
        return float(min(self.max_ejection, self.base_ejection * 2 ** (ejections - 1)))


class Breaker:
    """R6 and R7 for one scope, in Python."""

    __slots__ = ("ejections", "fails", "probe_until", "until")

    def __init__(self) -> None:
        self.fails = 0
        self.ejections = 0
        self.until = 0.0
        self.probe_until = 0.0

    @property
    def idle(self) -> bool:
        """Nothing to remember: the scope may be forgotten."""
        return not self.fails and not self.ejections

    def refusal(self, now: float) -> Optional[tuple[str, float]]:
        """(reason, wait) if this scope refuses an admission now (R8)."""
        if self.until > now:
            return EJECTED, self.until - now
        if self.ejections and self.probe_until > now:
            return PROBING, self.probe_until - now
        return None

    def admitted(self, now: float, policy: Policy) -> bool:
        """An admission went through: after an ejection it is the probe (R7). Returns whether it is."""
        if self.ejections:
            self.probe_until = now + policy.probe_timeout
            return True
        return False

    def failed(self, now: float, policy: Policy, may_eject: bool) -> float:
        """R6: count a failure; return the ejection it starts (0: none)."""
        self.fails += 1
        if self.until > now:
            return 0.0  # already ejected: requests admitted before it began are still finishing
        probing = self.ejections > 0 and self.probe_until > 0
        self.probe_until = 0.0
        if (self.fails < policy.breaker_failures and not probing) or not may_eject:
            return 0.0
        self.ejections += 1
        duration = policy.ejection(self.ejections)
        self.until = now + duration
        return duration

    def end_probe(self) -> None:
        """R7: a probe ended without an outcome."""
        self.probe_until = 0.0
