"""The local store: the rules of `rules.py` in this process's memory, with time injected for exact tests."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Optional

from .buckets import TokenBucket
from .rules import FOREVER, Breaker, Policy
from .store import (
    ADMITTED,
    BUSY,
    COOLING,
    DISABLED,
    HEALTHY,
    REQUESTS,
    TOKENS,
    WHOLE,
    Admission,
    BucketView,
    ControllerStore,
    ControllerView,
    Health,
    Ticket,
    scope_of,
)

if TYPE_CHECKING:
    from ..config.controllers import Limits
    from ..controllers import Controller
    from ..controllers.rate_headers import RateHeaders

log = logging.getLogger("chatgpt_apiserver.state")

MAX_SCOPES = 1024  # breaker and disable scopes remembered per controller (one per model that failed)


class LocalState:
    """Everything the local store holds for one controller."""

    __slots__ = ("breakers", "concurrency", "cooling_until", "disables", "fingerprint", "in_flight", "limits",
                 "name", "requests", "tokens")

    def __init__(self, name: str, limits: Limits, fingerprint: str, fraction: float, now: float) -> None:
        self.name = name
        self.fingerprint = fingerprint
        self.in_flight = 0
        self.cooling_until = 0.0
        self.disables: dict[str, tuple[float, str]] = {}  # scope -> (until, reason)
        self.breakers: dict[str, Breaker] = {}  # scope -> breaker
        self.limits = limits
        self.requests: Optional[TokenBucket] = None
        self.tokens: Optional[TokenBucket] = None
        self.concurrency: Optional[int] = None
        self.scale(limits, fraction, now)

    def scale(self, limits: Limits, fraction: float, now: float) -> None:
        """(Re)build the buckets at `fraction` of `limits`, keeping each level's share of its capacity."""
        old_requests, old_tokens = self.requests, self.tokens
        self.limits = limits
        self.requests = self.tokens = None
        if limits.rpm:
            burst = (limits.request_burst or limits.rpm) * fraction
            self.requests = _rebuilt(TokenBucket(limits.rpm * fraction, max(1.0, burst), now), old_requests, now)
        if limits.tpm:
            burst = (limits.token_burst or limits.tpm) * fraction
            self.tokens = _rebuilt(TokenBucket(limits.tpm * fraction, burst, now), old_tokens, now)
        self.concurrency = max(1, int(limits.max_concurrency * fraction)) if limits.max_concurrency else None

    def breaker(self, scope: str) -> Breaker:
        found = self.breakers.get(scope)
        if found is None:
            if len(self.breakers) >= MAX_SCOPES:
                _forget_one(self.breakers)
            found = self.breakers[scope] = Breaker()
        return found

    def refusal(self, model: Optional[str], now: float) -> Optional[tuple[str, float, str]]:
        """(reason, wait, why) if the controller's health refuses `model` (None: every model) now (rules R8,
        before the limits)."""
        scopes = (WHOLE,) if model is None else (WHOLE, model)
        if self.disables:  # (empty, as the breakers, unless something went wrong lately)
            for scope in scopes:
                disable = self.disables.get(scope)
                if disable is not None and disable[0] > now:
                    return DISABLED, disable[0] - now, disable[1]
        if self.cooling_until > now:
            return COOLING, self.cooling_until - now, ""
        if self.breakers:
            for scope in scopes:
                breaker = self.breakers.get(scope)
                refused = breaker.refusal(now) if breaker is not None else None
                if refused is not None:
                    return refused[0], refused[1], ""
        return None


def _rebuilt(bucket: TokenBucket, old: Optional[TokenBucket], now: float) -> TokenBucket:
    if old is not None and old.capacity:
        bucket.level = min(bucket.capacity, bucket.capacity * old.refill(now) / old.capacity)
    return bucket


def _forget_one(scopes: dict[str, Breaker]) -> None:
    """Drop an idle scope if there is one, else the oldest."""
    for scope, breaker in scopes.items():
        if breaker.idle and scope != WHOLE:
            del scopes[scope]
            return
    del scopes[next(iter(scopes))]


class LocalStore(ControllerStore):
    """Controller state in this process. `fraction` scales every limit (1/N while Redis is away)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, fraction: float = 1.0,
                 on_release: Optional[Callable[[], None]] = None) -> None:
        self.clock = clock
        self.fraction = fraction
        self.policy = Policy()
        self.states: dict[str, LocalState] = {}
        self.on_release = on_release

    def configure(self, controllers: Sequence[Controller], policy: Policy) -> None:
        now = self.clock()
        self.policy = policy
        states: dict[str, LocalState] = {}
        for controller in controllers:
            state = self.states.get(controller.name)
            if state is None:
                state = LocalState(controller.name, controller.spec.limits, controller.fingerprint, self.fraction, now)
            else:
                if state.limits != controller.spec.limits:
                    state.scale(controller.spec.limits, self.fraction, now)
                if state.fingerprint != controller.fingerprint:  # a rotated key: its disables do not follow
                    state.fingerprint = controller.fingerprint
                    state.disables.clear()
            states[controller.name] = state
        # A removed controller keeps its state until its last request ends (reload drains it).
        for name, state in self.states.items():
            if name not in states and state.in_flight:
                states[name] = state
        self.states = states

    def rescale(self, fraction: float) -> None:
        """Every limit at `fraction` of the configured one, keeping each bucket's fill (fallback transitions)."""
        self.fraction = fraction
        now = self.clock()
        for state in self.states.values():
            state.scale(state.limits, fraction, now)

    def seed(self, name: str, requests: Optional[float], tokens: Optional[float]) -> None:
        """Set bucket levels carried over from another store (already scaled to this one)."""
        state = self.states.get(name)
        if state is None:
            return
        now = self.clock()
        for bucket, level in ((state.requests, requests), (state.tokens, tokens)):
            if bucket is not None and level is not None:
                bucket.refill(now)
                bucket.level = min(bucket.capacity, level)

    def state(self, controller: Controller) -> LocalState:
        """The state of `controller` (created on first use, e.g. for a controller made outside configure)."""
        state = self.states.get(controller.name)
        if state is None:
            state = self.states[controller.name] = LocalState(
                controller.name, controller.spec.limits, controller.fingerprint, self.fraction, self.clock())
        return state

    async def admit(self, controller: Controller, model: str, tokens: float) -> Admission:
        return self.admit_now(controller, model, tokens)

    def admit_now(self, controller: Controller, model: str, tokens: float) -> Admission:
        """`admit` without a coroutine (the local store never waits on I/O)."""
        model = scope_of(controller, model)
        state = self.state(controller)
        now = self.clock()
        refused = state.refusal(model, now)
        if refused is not None:
            return Admission(False, refused[1], refused[0])
        if state.concurrency is not None and state.in_flight >= state.concurrency:
            return Admission(False, math.inf, BUSY)
        requests, bucket = state.requests, state.tokens
        if requests is not None and not requests.has(1, now):
            return Admission(False, requests.wait_for(1, now), REQUESTS)
        if bucket is not None and not bucket.has(tokens, now):
            return Admission(False, bucket.wait_for(tokens, now), TOKENS)
        state.in_flight += 1
        if requests is not None:
            requests.take(1, now)
        if bucket is not None:
            bucket.take(min(tokens, bucket.capacity), now)
        if not state.breakers:
            return ADMITTED
        probe = False
        for scope in (WHOLE, model):
            breaker = state.breakers.get(scope)
            if breaker is not None and breaker.admitted(now, self.policy):
                probe = True
        return Admission(True, probe=True) if probe else ADMITTED

    def release(self, ticket: Ticket, used_tokens: Optional[float], rate: Optional[RateHeaders],
                rate_age: float) -> None:
        state = self.states.get(ticket.controller.name)
        if state is None:
            return
        now = self.clock()
        state.in_flight = max(0, state.in_flight - 1)
        if ticket.probe:
            for scope in (WHOLE, scope_of(ticket.controller, ticket.model)):
                breaker = state.breakers.get(scope)
                if breaker is not None:
                    breaker.end_probe()
        tokens = state.tokens
        if tokens is not None and used_tokens is not None:
            difference = min(ticket.reserved, tokens.capacity) - used_tokens
            if difference > 0:
                tokens.give(difference, now)
            elif difference < 0:
                tokens.take(-difference, now)
        if rate is not None:
            if state.requests is not None:
                state.requests.correct(_scaled(rate.remaining_requests, self.fraction),
                                       _scaled(rate.limit_requests, self.fraction), rate_age, now)
            if tokens is not None:
                tokens.correct(_scaled(rate.remaining_tokens, self.fraction),
                               _scaled(rate.limit_tokens, self.fraction), rate_age, now)
        if self.on_release is not None:
            self.on_release()

    def succeeded(self, controller: Controller, model: str) -> None:
        model = scope_of(controller, model)
        state = self.state(controller)
        if not state.breakers:
            return
        for scope in (model, WHOLE):
            breaker = state.breakers.pop(scope, None)
            if breaker is not None and breaker.ejections:
                log.info("controller %s recovered%s after %d ejection(s)", controller.name,
                         "" if scope == WHOLE else f" for model {scope}", breaker.ejections)

    def failed(self, controller: Controller, model: str, whole: bool, may_eject: bool) -> float:
        scope = WHOLE if whole else scope_of(controller, model)
        breaker = self.state(controller).breaker(scope)
        ejected = breaker.failed(self.clock(), self.policy, may_eject)
        if ejected:
            log.warning("controller %s%s ejected for %gs after %d consecutive failures", controller.name,
                        "" if whole else f" (model {model})", ejected, breaker.fails)
        elif breaker.fails >= self.policy.breaker_failures and not may_eject and breaker.fails % 10 == 0:
            log.warning("controller %s failed %d times in a row for model %s but is the last usable one for it; "
                        "not ejecting it", controller.name, breaker.fails, model)
        return ejected

    def rate_limited(self, controller: Controller, seconds: float) -> None:
        state = self.state(controller)
        now = self.clock()
        until = now + seconds
        if until > state.cooling_until:
            state.cooling_until = until
            log.warning("controller %s cooling down for %.1fs after a 429", controller.name, seconds)
        if state.requests is not None:
            state.requests.refill(now)
            state.requests.level = min(state.requests.level, 0.0)

    def disable(self, controller: Controller, model: str, seconds: float, reason: str) -> None:
        model = scope_of(controller, model)
        state = self.state(controller)
        until = self.clock() + seconds
        current = state.disables.get(model)
        if current is None or until > current[0]:
            if current is None and len(state.disables) >= MAX_SCOPES:
                state.disables.pop(next(iter(state.disables)))
            state.disables[model] = (until, reason)
            how_long = "until the config is reloaded" if seconds == FOREVER else f"for {seconds:.0f}s"
            what = "" if model == WHOLE else f" for model {model}"
            log.error("controller %s disabled%s %s: %s", controller.name, what, how_long, reason)

    def clear_disables(self, controller: Controller) -> None:
        state = self.states.get(controller.name)
        if state is not None:
            for scope, (until, _reason) in list(state.disables.items()):
                if until == FOREVER:
                    del state.disables[scope]

    def health(self, controller: Controller, model: str) -> Health:
        model = scope_of(controller, model)
        state = self.states.get(controller.name)
        if state is None:
            return HEALTHY
        refused = state.refusal(model, self.clock())
        return Health(refused[0], refused[1], refused[2]) if refused is not None else HEALTHY

    def in_flight(self, controller: Controller) -> int:
        state = self.states.get(controller.name)
        return state.in_flight if state is not None else 0

    held = in_flight

    def headroom(self, controller: Controller) -> float:
        return self.view_now(controller).headroom(self.state(controller).concurrency)

    def levels(self, controller: Controller) -> tuple[Optional[float], Optional[float]]:
        """The request and token bucket levels now (None: not limited)."""
        state = self.state(controller)
        now = self.clock()
        return (state.requests.refill(now) if state.requests else None,
                state.tokens.refill(now) if state.tokens else None)

    async def views(self, controllers: Sequence[Controller]) -> dict[str, ControllerView]:
        return {controller.name: self.view_now(controller) for controller in controllers}

    def view_now(self, controller: Controller) -> ControllerView:
        """The view of one controller (no I/O)."""
        state = self.state(controller)
        now = self.clock()
        view = ControllerView(in_flight=state.in_flight)
        for label, bucket in (("requests", state.requests), ("tokens", state.tokens)):
            if bucket is not None:
                view.buckets[label] = BucketView(bucket.refill(now), bucket.capacity, bucket.rate * 60)
        refused = state.refusal(None, now)
        if refused is not None:
            view.status, view.wait, view.disabled_reason = refused
        for scope, (until, reason) in state.disables.items():
            if scope != WHOLE and until > now:
                view.disabled_models[scope] = reason
        for scope, breaker in state.breakers.items():
            view.consecutive_failures = max(view.consecutive_failures, breaker.fails)
            if scope != WHOLE and breaker.until > now:
                view.ejected_models[scope] = breaker.until - now
        return view


def _scaled(value: Optional[float], fraction: float) -> Optional[float]:
    return value * fraction if value is not None else None
