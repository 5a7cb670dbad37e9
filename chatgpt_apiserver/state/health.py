"""Per-controller state: buckets, in-flight count, cooldowns, disables and the circuit breaker."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from ..config.controllers import Limits
from ..controllers.rate_headers import RateHeaders
from .buckets import TokenBucket

log = logging.getLogger("chatgpt_apiserver.health")

FOREVER = float("inf")


@dataclass(frozen=True)
class BreakerPolicy:
    """Consecutive failures before ejection, and how long ejections last (doubling each time)."""

    failures: int = 5
    base_ejection: float = 5.0
    max_ejection: float = 300.0


@dataclass
class Counters:
    """Totals shown in the admin view."""

    successes: int = 0
    failures: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # ok, 429, quota, auth, 5xx, timeout, ...
    tokens_by_model: dict[str, list[int]] = field(default_factory=dict)  # model -> [prompt, completion]

    def outcome(self, kind: str) -> None:
        """Count one attempt's outcome."""
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1


@dataclass
class ControllerState:
    """Everything the scheduler knows about one controller at a point in time."""

    name: str
    limits: Limits
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    now: float = 0.0
    requests: Optional[TokenBucket] = None
    tokens: Optional[TokenBucket] = None
    in_flight: int = 0
    cooling_until: float = 0.0
    disabled_until: float = 0.0
    disabled_reason: str = ""
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    probing: bool = False
    counters: Counters = field(default_factory=Counters)
    concurrency: Optional[int] = None

    def __post_init__(self) -> None:
        self.rescale(1.0, self.now)

    def rescale(self, fraction: float, now: float) -> None:
        """(Re)build the buckets at `fraction` of the configured limits (1/N when N instances share them)."""
        limits = self.limits
        self.requests = self.tokens = None
        if limits.rpm:
            burst = (limits.request_burst or limits.rpm) * fraction
            self.requests = TokenBucket(limits.rpm * fraction, max(1.0, burst), now)
        if limits.tpm:
            burst = (limits.token_burst or limits.tpm) * fraction
            self.tokens = TokenBucket(limits.tpm * fraction, burst, now)
        self.concurrency = max(1, int(limits.max_concurrency * fraction)) if limits.max_concurrency else None

    def mirror(self, reason: str, wait: float, now: float) -> None:
        """Note what the shared state said about this controller, so it is skipped locally meanwhile."""
        if reason == "cooling":
            self.cooling_until = max(self.cooling_until, now + wait)
        elif reason == "disabled":
            self.disabled_until = max(self.disabled_until, now + wait)
            self.disabled_reason = self.disabled_reason or "disabled by another instance"
        elif reason == "ejected":
            self.ejected_until = max(self.ejected_until, now + wait)

    # --- what the scheduler asks -------------------------------------------------------------------

    def status(self, now: float) -> str:
        """ok, cooling, disabled or ejected."""
        if now < self.disabled_until:
            return "disabled"
        if now < self.cooling_until:
            return "cooling"
        if now < self.ejected_until:
            return "ejected"
        return "ok"

    def usable(self, now: float) -> bool:
        """Not disabled, cooling or ejected; after an ejection, one probe at a time (half-open)."""
        if now < self.disabled_until or now < self.cooling_until or now < self.ejected_until:
            return False
        return not self.probing

    def has_room(self, tokens: float, now: float) -> bool:
        """Room in every configured limit for one more request of `tokens`."""
        if self.concurrency is not None and self.in_flight >= self.concurrency:
            return False
        if self.requests is not None and not self.requests.has(1, now):
            return False
        return self.tokens is None or self.tokens.has(tokens, now)

    def free_in(self, tokens: float, now: float) -> float:
        """Seconds until this controller could take the request (inf if only a release can free it)."""
        waits = [0.0]
        for until in (self.disabled_until, self.cooling_until, self.ejected_until):
            if until > now:
                waits.append(until - now)
        if self.requests is not None:
            waits.append(self.requests.wait_for(1, now))
        if self.tokens is not None:
            waits.append(self.tokens.wait_for(tokens, now))
        return max(waits)

    def headroom(self, now: float) -> float:
        """The tightest of the limits' free fractions, 0..1 (1 when nothing is limited)."""
        fractions = [1.0]
        if self.requests is not None:
            fractions.append(self.requests.fraction(now))
        if self.tokens is not None:
            fractions.append(self.tokens.fraction(now))
        if self.concurrency:
            fractions.append(max(0.0, 1 - self.in_flight / self.concurrency))
        return min(fractions)

    # --- reservations ------------------------------------------------------------------------------

    def reserve(self, tokens: float, now: float) -> None:
        """Take one request, `tokens` and a concurrency slot."""
        self.in_flight += 1
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            self.tokens.take(tokens, now)
        if now >= self.ejected_until and self.ejections and self.consecutive_failures:
            self.probing = True  # half-open: this request is the probe

    def release(self, reserved: float, used: Optional[float], now: float) -> None:
        """End a request: free its slot and settle its tokens against what was really used."""
        self.in_flight -= 1
        self.probing = False
        if self.tokens is not None and used is not None:
            difference = reserved - used
            if difference > 0:
                self.tokens.give(difference, now)
            elif difference < 0:
                self.tokens.take(-difference, now)

    def correct(self, headers: RateHeaders, now: float) -> None:
        """Adjust the buckets to what the upstream's x-ratelimit headers say."""
        if self.requests is not None:
            self.requests.correct(headers.remaining_requests, headers.limit_requests, now)
        if self.tokens is not None:
            self.tokens.correct(headers.remaining_tokens, headers.limit_tokens, now)

    # --- outcomes ------------------------------------------------------------------------------------

    def succeeded(self, now: float) -> None:
        """A usable answer: closes the breaker."""
        self.counters.successes += 1
        self.probing = False
        if self.ejections or self.consecutive_failures:
            if self.ejections:
                log.info("controller %s recovered after %d ejection(s)", self.name, self.ejections)
            self.consecutive_failures = 0
            self.ejections = 0
            self.ejected_until = 0.0

    def rate_limited(self, cooldown: float, now: float) -> None:
        """A 429: cool down; a later deadline extends the cooldown, an earlier one never shortens it."""
        self.counters.rate_limited += 1
        self.probing = False
        until = now + cooldown
        if until > self.cooling_until:
            self.cooling_until = until
            log.warning("controller %s cooling down for %.1fs after a 429", self.name, cooldown)
        if self.requests is not None:
            self.requests.level = min(self.requests.level, 0.0)

    def disable(self, reason: str, seconds: float, now: float) -> None:
        """Out of quota, or a bad key: no requests until `seconds` pass (inf: until a reload)."""
        self.counters.failures += 1
        self.probing = False
        until = now + seconds
        if until > self.disabled_until:
            self.disabled_until = until
            self.disabled_reason = reason
            how_long = "until the config is reloaded" if seconds == FOREVER else f"for {seconds:.0f}s"
            log.error("controller %s disabled %s: %s", self.name, how_long, reason)

    def failed(self, may_eject: bool, now: float) -> None:
        """A 5xx, connection error or timeout: count it; eject after enough in a row."""
        self.counters.failures += 1
        self.consecutive_failures += 1
        was_probe = self.probing
        self.probing = False
        if self.consecutive_failures < self.breaker.failures and not was_probe:
            return
        if not may_eject:
            log.warning("controller %s failed %d times in a row but is the last usable one; not ejecting it",
                        self.name, self.consecutive_failures)
            return
        duration = min(self.breaker.max_ejection, self.breaker.base_ejection * 2 ** self.ejections)
        self.ejections += 1
        self.ejected_until = now + duration
        log.warning("controller %s ejected for %.0fs after %d consecutive failures", self.name, duration,
                    self.consecutive_failures)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The admin view of this state."""
        buckets: dict[str, Any] = {}
        for label, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                buckets[label] = {"level": round(bucket.refill(now), 2), "capacity": bucket.capacity,
                                  "per_minute": round(bucket.rate * 60, 2)}
        status = self.status(now)
        view: dict[str, Any] = {"state": status, "in_flight": self.in_flight,
                                "max_concurrency": self.limits.max_concurrency, "buckets": buckets,
                                "consecutive_failures": self.consecutive_failures,
                                "counts": {"successes": self.counters.successes,
                                           "failures": self.counters.failures,
                                           "rate_limited": self.counters.rate_limited,
                                           "prompt_tokens": self.counters.prompt_tokens,
                                           "completion_tokens": self.counters.completion_tokens}}
        if status == "cooling":
            view["cooling_for"] = round(self.cooling_until - now, 3)
        if status == "disabled":
            view["disabled_reason"] = self.disabled_reason
            view["disabled_for"] = None if self.disabled_until == FOREVER else round(self.disabled_until - now, 3)
        if status == "ejected":
            view["ejected_for"] = round(self.ejected_until - now, 3)
        return view
