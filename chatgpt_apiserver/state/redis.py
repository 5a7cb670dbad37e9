"""The Redis store: the rules of `rules.py` in Lua, shared by every instance of the gateway.

Keys (P = redis_prefix, C = controller name; the braces keep one controller's keys in one cluster slot):
  P:{C}:req, P:{C}:tok   hashes {level, ts, cap, rate}: the request and token buckets
  P:{C}:inflight         hash instance -> slots held;  P:{C}:seen: instance -> its last heartbeat
  P:{C}:cool             the cooldown's deadline
  P:{C}:off:<fp>         hash scope -> {until, why, forever}: disables of the credentials with fingerprint fp
  P:{C}:brk              hash scope -> {fails, ej, until, probe}: the breaker of the controller (*) and models
  P:instances:<id>       heartbeat of one gateway instance
Every key expires on its own. This process keeps a mirror of what Redis last said about each controller
(from every script's reply and a refresh with each heartbeat), for the decisions that must not wait on a
round trip: which controllers to try, the `least_busy` and `capacity` pools, and readiness.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from .redis_link import HEARTBEAT_TTL_MS, RedisLink
from .redis_wire import Packed
from .rules import FOREVER, Policy
from .store import (
    ADMITTED,
    COOLING,
    DISABLED,
    EJECTED,
    HEALTHY,
    PROBING,
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

NOW = b"-1"  # "use Redis's clock"
POLL_SECONDS = 0.05


@dataclass(slots=True)
class MirroredBucket:
    """A bucket as Redis last reported it."""

    level: float
    capacity: float
    rate: float  # per second
    at: float

    def now(self, now: float) -> float:
        """The level refilled to `now`."""
        return min(self.capacity, self.level + max(0.0, now - self.at) * self.rate)


def _lower(low: Optional[MirroredBucket], seen: MirroredBucket) -> MirroredBucket:
    """The lower of two readings of one bucket, compared at the time of the later one."""
    return seen if low is None or seen.level <= low.now(seen.at) else low


@dataclass
class Mirror:
    """What this process last learned about one controller from Redis."""

    limits: Limits
    keys: dict[str, bytes]
    constants: tuple[bytes, ...]  # req_rate req_cap tok_rate tok_cap (per ms)
    # The same, every key (the take and view scripts), the settle script's keys and the concurrency limit,
    # encoded once for the wire.
    packed_constants: Packed
    all_keys: Packed
    settle_keys: Packed
    concurrency: Packed
    requests: Optional[MirroredBucket] = None
    tokens: Optional[MirroredBucket] = None
    low_requests: Optional[MirroredBucket] = None  # the lowest of each since the last heartbeat
    low_tokens: Optional[MirroredBucket] = None
    in_flight: int = 0
    held: int = 0
    cooling_until: float = 0.0
    disables: dict[str, tuple[float, str]] = field(default_factory=dict)  # scope -> (until, reason)
    ejected: dict[str, float] = field(default_factory=dict)  # scope -> until
    probing: dict[str, float] = field(default_factory=dict)  # scope -> until
    dirty: set[str] = field(default_factory=set)  # scopes whose breaker may hold failures


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: Any) -> Optional[float]:
    text = _text(value)
    return float(text) if text not in ("", "None") else None


def _opt(value: Optional[float]) -> bytes:
    return b"" if value is None else repr(float(value)).encode()


class RedisStore(ControllerStore):
    """Controller state in Redis (see the module docstring)."""

    poll_interval = POLL_SECONDS

    def __init__(self, link: RedisLink, clock: Callable[[], float] = time.monotonic,
                 redis_clock: Optional[Callable[[], float]] = None) -> None:
        self.link = link
        self.clock = clock
        self.redis_clock = redis_clock  # tests: a time in seconds passed to every script instead of TIME
        self.policy = Policy()
        self.mirrors: dict[str, Mirror] = {}
        self.controllers: list[Controller] = []
        self._instance = Packed(link.instance)
        self._timing = self._timing_of(self.policy)
        self.link.on_beat = self.beat

    @property
    def available(self) -> bool:
        """Whether Redis answers."""
        return self.link.available

    def _now(self) -> bytes:
        return NOW if self.redis_clock is None else b"%d" % round(self.redis_clock() * 1000)

    @staticmethod
    def _timing_of(policy: Policy) -> Packed:
        """The probe timeout and the heartbeat TTL in ms, as the take script reads them."""
        return Packed(b"%d" % round(policy.probe_timeout * 1000), b"%d" % round(policy.heartbeat_ttl * 1000))

    def configure(self, controllers: Sequence[Controller], policy: Policy) -> None:
        self.policy = policy
        self._timing = self._timing_of(policy)
        self.controllers = list(controllers)
        mirrors = {}
        for controller in controllers:
            mirror = self.mirrors.get(controller.name)
            if mirror is None or mirror.limits != controller.spec.limits or \
                    mirror.keys["off"] != self.link.key(controller.name, "off:" + controller.fingerprint):
                fresh = self._mirror(controller)
                if mirror is not None:
                    fresh.held, fresh.in_flight = mirror.held, mirror.in_flight
                mirror = fresh
            mirrors[controller.name] = mirror
        for name, mirror in self.mirrors.items():
            if name not in mirrors and mirror.held:
                mirrors[name] = mirror  # removed, still finishing its requests
        self.mirrors = mirrors

    def _mirror(self, controller: Controller) -> Mirror:
        limits = controller.spec.limits
        keys = {kind: self.link.key(controller.name, kind)
                for kind in ("req", "tok", "inflight", "seen", "cool", "brk")}
        keys["off"] = self.link.key(controller.name, "off:" + controller.fingerprint)
        constants = (repr((limits.rpm or 0) / 60_000).encode(), repr(float(limits.request_burst or limits.rpm or 0))
                     .encode(), repr((limits.tpm or 0) / 60_000).encode(),
                     repr(float(limits.token_burst or limits.tpm or 0)).encode())
        return Mirror(limits, keys, constants, Packed(*constants),
                      Packed(*(keys[kind] for kind in ("req", "tok", "inflight", "seen", "cool", "off", "brk"))),
                      Packed(*(keys[kind] for kind in ("req", "tok", "inflight", "seen", "brk"))),
                      Packed(b"%d" % (limits.max_concurrency or 0)))

    def mirror(self, controller: Controller) -> Mirror:
        """The mirror of `controller` (made on first use)."""
        found = self.mirrors.get(controller.name)
        if found is None:
            found = self.mirrors[controller.name] = self._mirror(controller)
        return found

    # --- admission ---------------------------------------------------------------------------------

    async def admit(self, controller: Controller, model: str, tokens: float) -> Admission:
        model = scope_of(controller, model)
        m = self.mirror(controller)
        reply = await self.link.call("take", m.all_keys, (
            self._now(), self._instance, model, m.packed_constants, _opt(tokens), m.concurrency, self._timing))
        ok, wait_ms, reason, probe, why, req, tok, total, fails, scope = reply
        now = self.clock()
        self._learn_levels(m, _number(req), _number(tok), now)
        if int(total) >= 0:
            m.in_flight = int(total)
        reason, scope = _text(reason), _text(scope)
        if int(fails) > 0:
            m.dirty.add(model)
        if int(ok):
            m.held += 1
            m.cooling_until = 0.0
            for each in (WHOLE, model):
                m.ejected.pop(each, None)
                m.disables.pop(each, None)
                m.probing.pop(each, None)
            if int(probe):
                m.dirty.update((WHOLE, model))
                return Admission(True, probe=True)
            return ADMITTED
        wait = math.inf if int(float(wait_ms)) < 0 else float(wait_ms) / 1000
        until = now + wait
        if reason == COOLING:
            m.cooling_until = until
        elif reason == DISABLED:
            m.disables[scope] = (until, _text(why))
        elif reason == EJECTED:
            m.ejected[scope] = until
            m.dirty.add(scope)
        elif reason == PROBING:
            m.probing[scope] = until
        return Admission(False, wait, reason)

    def _learn_levels(self, m: Mirror, requests: Optional[float], tokens: Optional[float], now: float) -> None:
        limits = m.limits
        if requests is not None and limits.rpm:
            m.requests = MirroredBucket(requests, (limits.request_burst or limits.rpm), limits.rpm / 60, now)
            m.low_requests = _lower(m.low_requests, m.requests)
        if tokens is not None and limits.tpm:
            m.tokens = MirroredBucket(tokens, (limits.token_burst or limits.tpm), limits.tpm / 60, now)
            m.low_tokens = _lower(m.low_tokens, m.tokens)

    def release(self, ticket: Ticket, used_tokens: Optional[float], rate: Optional[RateHeaders],
                rate_age: float) -> None:
        m = self.mirrors.get(ticket.controller.name)
        if m is None:
            return
        m.held = max(0, m.held - 1)
        m.in_flight = max(0, m.in_flight - 1)
        if used_tokens is not None and m.tokens is not None:
            now = self.clock()
            delta = min(ticket.reserved, m.tokens.capacity) - used_tokens
            m.tokens.level, m.tokens.at = min(m.tokens.capacity, m.tokens.now(now) + delta), now
        scope = scope_of(ticket.controller, ticket.model)
        if ticket.probe:
            for each in (WHOLE, scope):
                m.probing.pop(each, None)
        r = rate
        self.link.send("settle", m.settle_keys, (
            self._now(), self._instance, scope, _opt(ticket.reserved), m.packed_constants,
            _opt(r.remaining_requests if r else None), _opt(r.remaining_tokens if r else None),
            _opt(r.limit_requests if r else None), _opt(r.limit_tokens if r else None),
            b"%d" % round(max(0.0, rate_age) * 1000), b"1" if ticket.probe else b"0", _opt(used_tokens)))

    # --- outcomes ----------------------------------------------------------------------------------

    def succeeded(self, controller: Controller, model: str) -> None:
        model = scope_of(controller, model)
        m = self.mirror(controller)
        if model in m.dirty or WHOLE in m.dirty:
            m.dirty.discard(model)
            m.dirty.discard(WHOLE)
            for scope in (WHOLE, model):
                m.ejected.pop(scope, None)
                m.probing.pop(scope, None)
            self.link.send("reset", (m.keys["brk"],), (self._now(), model), self._recovered(controller, model))

    def _recovered(self, controller: Controller, model: str) -> Callable[[Any], None]:
        def note(ejections: Any) -> None:
            if int(ejections):
                log.info("controller %s recovered for model %s after %d ejection(s)", controller.name, model,
                         int(ejections))
        return note

    def failed(self, controller: Controller, model: str, whole: bool, may_eject: bool) -> float:
        m = self.mirror(controller)
        model = scope_of(controller, model)
        scope = WHOLE if whole else model
        m.dirty.add(scope)
        policy = self.policy

        def ejected(reply: Any) -> None:
            duration = float(_text(reply[0])) / 1000
            if duration > 0:
                m.ejected[scope] = self.clock() + duration
                log.warning("controller %s%s ejected for %gs after %d consecutive failures", controller.name,
                            "" if whole else f" (model {model})", duration, int(reply[1]))

        self.link.send("fail", (m.keys["brk"],), (
            self._now(), scope, b"%d" % policy.breaker_failures, b"1" if may_eject else b"0",
            b"%d" % round(policy.base_ejection * 1000), b"%d" % round(policy.max_ejection * 1000)), ejected)
        return 0.0

    def rate_limited(self, controller: Controller, seconds: float) -> None:
        m = self.mirror(controller)
        now = self.clock()
        if now + seconds > m.cooling_until:
            m.cooling_until = now + seconds
            log.warning("controller %s cooling down for %.1fs after a 429", controller.name, seconds)
        if m.requests is not None:
            m.requests.level, m.requests.at = min(m.requests.now(now), 0.0), now
        self.link.send("cool", (m.keys["cool"], m.keys["req"]), (self._now(), _opt(seconds), *m.constants[:2]))

    def disable(self, controller: Controller, model: str, seconds: float, reason: str) -> None:
        model = scope_of(controller, model)
        m = self.mirror(controller)
        until = self.clock() + seconds
        current = m.disables.get(model)
        if current is None or until > current[0]:
            m.disables[model] = (until, reason)
            how_long = "until the config is reloaded" if seconds == FOREVER else f"for {seconds:.0f}s"
            what = "" if model == WHOLE else f" for model {model}"
            log.error("controller %s disabled%s %s: %s", controller.name, what, how_long, reason)
        self.link.send("disable", (m.keys["off"],), (
            self._now(), model, b"-1" if math.isinf(seconds) else _opt(seconds), reason))

    def clear_disables(self, controller: Controller) -> None:
        m = self.mirror(controller)
        for scope, (until, _reason) in list(m.disables.items()):
            if math.isinf(until):
                del m.disables[scope]
        self.link.send("clear", (m.keys["off"],), (self._now(),))

    # --- what this process knows -------------------------------------------------------------------

    def health(self, controller: Controller, model: str) -> Health:
        m = self.mirrors.get(controller.name)
        if m is None or not (m.disables or m.cooling_until or m.ejected or m.probing):
            return HEALTHY  # (the common case, without the lookups)
        model = scope_of(controller, model)
        now = self.clock()
        for scope in (WHOLE, model):
            disable = m.disables.get(scope)
            if disable is not None and disable[0] > now:
                return Health(DISABLED, disable[0] - now, disable[1])
        if m.cooling_until > now:
            return Health(COOLING, m.cooling_until - now)
        for scope in (WHOLE, model):
            until = m.ejected.get(scope, 0.0)
            if until > now:
                return Health(EJECTED, until - now)
        for scope in (WHOLE, model):
            until = m.probing.get(scope, 0.0)
            if until > now:
                return Health(PROBING, until - now)
        return HEALTHY

    def in_flight(self, controller: Controller) -> int:
        m = self.mirrors.get(controller.name)
        return m.in_flight if m is not None else 0

    def held(self, controller: Controller) -> int:
        m = self.mirrors.get(controller.name)
        return m.held if m is not None else 0

    def headroom(self, controller: Controller) -> float:
        m = self.mirror(controller)
        now = self.clock()
        fractions = [1.0]
        for bucket in (m.requests, m.tokens):
            if bucket is not None and bucket.capacity:
                fractions.append(max(0.0, bucket.now(now)) / bucket.capacity)
        if m.limits.max_concurrency:
            fractions.append(max(0.0, 1 - m.in_flight / m.limits.max_concurrency))
        return min(fractions)

    def levels(self, controller: Controller) -> tuple[Optional[float], Optional[float]]:
        """The last known request and token bucket levels, refilled to now (None: unknown or unlimited)."""
        m = self.mirror(controller)
        now = self.clock()
        return (m.requests.now(now) if m.requests else None, m.tokens.now(now) if m.tokens else None)

    # --- reading Redis -----------------------------------------------------------------------------

    async def views(self, controllers: Sequence[Controller]) -> dict[str, ControllerView]:
        mirrors = [self.mirror(controller) for controller in controllers]
        replies = await asyncio.gather(*(self.link.call("view", m.all_keys, (
            self._now(), *m.constants, b"%d" % HEARTBEAT_TTL_MS)) for m in mirrors))
        now = self.clock()
        return {controller.name: self._view(m, reply, now)
                for controller, m, reply in zip(controllers, mirrors, replies, strict=True)}

    def _view(self, m: Mirror, reply: Any, now: float) -> ControllerView:
        view = ControllerView(in_flight=int(reply[6]))
        m.in_flight = view.in_flight
        for index, label in ((0, "requests"), (3, "tokens")):
            level = _number(reply[index])
            if level is not None:
                capacity, rate = float(_text(reply[index + 1])), float(_text(reply[index + 2])) * 1000
                view.buckets[label] = BucketView(level, capacity, rate * 60)
                bucket = MirroredBucket(level, capacity, rate, now)
                if label == "requests":
                    m.requests, m.low_requests = bucket, _lower(m.low_requests, bucket)
                else:
                    m.tokens, m.low_tokens = bucket, _lower(m.low_tokens, bucket)
        cooling = float(_text(reply[7])) / 1000
        m.cooling_until = now + cooling if cooling > 0 else 0.0
        off = _pairs(reply[8])
        m.disables.clear()
        for scope in {name.rsplit(":", 1)[0] for name in off}:
            left = float(off.get(f"{scope}:until", "0")) / 1000
            if left > 0:
                forever = off.get(f"{scope}:forever") == "1"
                m.disables[scope] = (math.inf if forever else now + left, off.get(f"{scope}:why", ""))
        brk = _pairs(reply[9])
        m.ejected.clear()
        for scope in {name.rsplit(":", 1)[0] for name in brk}:
            fails = int(float(brk.get(f"{scope}:fails", "0")))
            left = float(brk.get(f"{scope}:until", "0")) / 1000
            if fails:
                m.dirty.add(scope)
                view.consecutive_failures = max(view.consecutive_failures, fails)
            if left > 0:
                m.ejected[scope] = now + left
                if scope != WHOLE:
                    view.ejected_models[scope] = left
        health = self.health_of(m, now)
        view.status, view.wait, view.disabled_reason = health.status, health.wait, health.reason
        for scope, (until, reason) in m.disables.items():
            if scope != WHOLE and until > now:
                view.disabled_models[scope] = reason
        return view

    def health_of(self, m: Mirror, now: float) -> Health:
        """The health of the whole controller (every model) from the mirror."""
        disable = m.disables.get(WHOLE)
        if disable is not None and disable[0] > now:
            return Health(DISABLED, disable[0] - now, disable[1])
        if m.cooling_until > now:
            return Health(COOLING, m.cooling_until - now)
        if m.ejected.get(WHOLE, 0.0) > now:
            return Health(EJECTED, m.ejected[WHOLE] - now)
        return HEALTHY

    async def beat(self) -> None:
        """With each heartbeat: keep this instance's slots alive, refresh the mirrors, and start the lowest
        levels seen again from them (see `low_levels`)."""
        for m in list(self.mirrors.values()):
            if m.held:
                self.link.send("beat", (m.keys["inflight"], m.keys["seen"]), (self._now(), self.link.instance, b"-1"))
        if self.controllers:
            try:
                await self.views(self.controllers)
            except Exception as error:
                log.debug("refreshing the Redis mirror failed: %s", type(error).__name__)
        for m in self.mirrors.values():
            m.low_requests, m.low_tokens = m.requests, m.tokens  # the lows start again from what Redis says

    def low_levels(self, controller: Controller) -> tuple[Optional[float], Optional[float]]:
        """The lowest levels seen since the last heartbeat, refilled to now. After Redis forgot everything,
        the mirror may hold a fresh, full bucket a request took from meanwhile; these are from before."""
        m = self.mirror(controller)
        now = self.clock()
        return (m.low_requests.now(now) if m.low_requests else None, m.low_tokens.now(now) if m.low_tokens else None)

    def adopt(self, controller: Controller, slots: int) -> None:
        """Count `slots` another store took for `controller` as this instance's (see `resume`); each is
        released here like one of its own."""
        m = self.mirror(controller)
        m.held += slots
        m.in_flight += slots

    def resume(self, controllers: Sequence[Controller], levels: dict[str, tuple[Optional[float], Optional[float]]]
               ) -> None:
        """Redis is back: restore this instance's slot counts and carry the levels over (never raising one)."""
        for controller in controllers:
            m = self.mirror(controller)
            self.link.send("beat", (m.keys["inflight"], m.keys["seen"]),
                           (self._now(), self.link.instance, b"%d" % m.held))
            requests, tokens = levels.get(controller.name, (None, None))
            self.link.send("seed", (m.keys["req"], m.keys["tok"]), (
                self._now(), m.constants[0], m.constants[1], _opt(requests), m.constants[2], m.constants[3],
                _opt(tokens)))


def _pairs(flat: Any) -> dict[str, str]:
    items = [_text(item) for item in flat]
    return dict(zip(items[::2], items[1::2], strict=True))
