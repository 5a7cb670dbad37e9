"""Admission: which controller may take a request now, bounded waiting when none can, and retry budgets."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from ..controllers import Controller
from ..controllers.rate_headers import RateHeaders
from ..errors import ApiError
from ..state.redis import RedisUnavailable, SharedState
from .balancer import Balancer

log = logging.getLogger("chatgpt_apiserver.scheduler")


@dataclass(frozen=True)
class QueuePolicy:
    """How long and how many requests may wait for a controller to free up."""

    max_wait: float = 10.0
    max_size: int = 1000


class RetryBudget:
    """Retries earn `ratio` per request plus `per_second` over time, so an outage cannot multiply load."""

    def __init__(self, ratio: float = 0.2, per_second: float = 5.0, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.ratio = ratio
        self.per_second = per_second
        self.clock = clock
        self.capacity = max(10.0, per_second * 10)
        self.balance = self.capacity
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        if now > self.updated:
            self.balance = min(self.capacity, self.balance + (now - self.updated) * self.per_second)
            self.updated = now

    def deposit(self) -> None:
        """A request arrived: it earns a fraction of a retry."""
        self.balance = min(self.capacity, self.balance + self.ratio)

    def withdraw(self) -> bool:
        """Spend one retry if the budget allows it."""
        self._refill()
        if self.balance >= 1:
            self.balance -= 1
            return True
        return False


class Lease:
    """One admitted attempt on one controller: a concurrency slot, a request and reserved tokens."""

    __slots__ = ("_scheduler", "controller", "headers", "released", "reserved", "shared", "succeeded")

    def __init__(self, scheduler: Scheduler, controller: Controller, reserved: float, shared: bool = False) -> None:
        self._scheduler = scheduler
        self.controller = controller
        self.reserved = reserved
        self.released = False
        self.shared = shared  # taken from the Redis buckets, so settled there too
        self.succeeded = False
        self.headers: Optional[RateHeaders] = None

    def release(self, used_tokens: Optional[float] = None) -> None:
        """Give back the slot and settle the tokens (None: keep the whole reservation)."""
        if not self.released:
            self.released = True
            self._scheduler.release(self, used_tokens)


@dataclass
class _Waiter:
    model: str
    tokens: float
    exclude: Sequence[Controller]
    future: asyncio.Future[Lease]


class Scheduler:
    """Picks a controller with room for a request, or holds the request first in, first out."""

    def __init__(self, controllers: list[Controller], balancer: Balancer, queue: QueuePolicy,
                 clock: Callable[[], float], on_wait: Optional[Callable[[float], None]] = None) -> None:
        self.controllers = controllers
        self.on_wait = on_wait
        self.shared: Optional[SharedState] = None
        self._shared_waiting = 0
        self.balancer = balancer
        self.queue = queue
        self.clock = clock
        self._waiters: deque[_Waiter] = deque()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = math.inf

    @property
    def queue_length(self) -> int:
        """Requests waiting for a controller."""
        return len(self._waiters) + self._shared_waiting

    def serving(self, model: str) -> list[Controller]:
        """Controllers configured for `model`."""
        return [c for c in self.controllers if c.serves(model)]

    def _usable(self, model: str, exclude: Sequence[Controller], now: float) -> list[Controller]:
        """Controllers for `model`, not yet tried, and not cooling down, disabled or ejected."""
        return [c for c in self.controllers if c.serves(model) and c not in exclude and c.state.usable(now)]

    def _admit(self, model: str, tokens: float, exclude: Sequence[Controller], now: float) -> Optional[Lease]:
        candidates = [c for c in self._usable(model, exclude, now) if c.state.has_room(tokens, now)]
        chosen = self.balancer.pick(candidates)
        if chosen is None:
            return None
        chosen.state.reserve(tokens, now)
        return Lease(self, chosen, tokens)

    def _earliest(self, model: str, tokens: float, exclude: Sequence[Controller], now: float) -> float:
        """Seconds until some untried controller for `model` could have room (inf: only a release helps)."""
        waits = [c.state.free_in(tokens, now) for c in self.controllers if c.serves(model) and c not in exclude]
        return min(waits) if waits else math.inf

    async def acquire(self, model: str, tokens: float, exclude: Sequence[Controller] = ()) -> Lease:
        """A lease on a controller with room, waiting up to the queue policy's bound for one to free up."""
        shared = self.shared
        if shared is not None:
            if shared.available:
                try:
                    return await self._acquire_shared(shared, model, tokens, exclude)
                except RedisUnavailable:
                    pass  # it has just gone away: the fallback rule applies below
            if shared.fallback == "refuse":
                raise ApiError(503, "The shared rate-limit state (Redis) is unavailable; retry shortly.",
                               code="shared_state_unavailable", headers={"Retry-After": "1"})
        now = self.clock()
        if not self._waiters:
            lease = self._admit(model, tokens, exclude, now)
            if lease is not None:
                return lease
        earliest = self._earliest(model, tokens, exclude, now)
        if earliest > self.queue.max_wait and not any(c.state.in_flight for c in self.serving(model)):
            raise self._full(model, earliest)
        if len(self._waiters) >= self.queue.max_size:
            raise self._full(model, earliest, queue_full=True)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(model, tokens, exclude, loop.create_future())
        self._waiters.append(waiter)
        self._arm(now + earliest)
        try:
            async with asyncio.timeout(self.queue.max_wait):
                lease = await waiter.future
            if self.on_wait is not None:
                self.on_wait(self.clock() - now)
            return lease
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()  # admitted just as the wait ran out
            raise self._full(model, self._earliest(model, tokens, exclude, self.clock())) from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.future.result().release()  # admitted just as the client went away
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _acquire_shared(self, shared: SharedState, model: str, tokens: float,
                              exclude: Sequence[Controller]) -> Lease:
        """Admission against the buckets in Redis (one round trip per controller tried), polling while full."""
        started = self.clock()
        deadline = started + self.queue.max_wait
        queued = False
        try:
            while True:
                now = self.clock()
                lease, earliest = await self._take_shared(shared, model, tokens, exclude, now)
                if lease is not None:
                    if queued and self.on_wait is not None:
                        self.on_wait(self.clock() - started)
                    return lease
                if math.isfinite(earliest) and now + earliest > deadline:
                    raise self._full(model, earliest)
                pause = min(earliest if math.isfinite(earliest) else 0.05, 0.25)
                if now + pause > deadline:
                    raise self._full(model, earliest)
                if not queued:
                    if self._shared_waiting >= self.queue.max_size:
                        raise self._full(model, earliest, queue_full=True)
                    queued = True
                    self._shared_waiting += 1
                await asyncio.sleep(pause)
        finally:
            if queued:
                self._shared_waiting -= 1

    async def _take_shared(self, shared: SharedState, model: str, tokens: float, exclude: Sequence[Controller],
                           now: float) -> tuple[Optional[Lease], float]:
        """Try the eligible controllers in the balancer's order; return a lease or the earliest wait."""
        candidates = self._usable(model, exclude, now)
        if not candidates:
            return None, self._earliest(model, tokens, exclude, now)
        earliest = math.inf
        while candidates:
            chosen = self.balancer.pick(candidates)
            assert chosen is not None
            candidates.remove(chosen)
            taken = await shared.take(chosen, tokens)
            if taken.ok:
                chosen.state.in_flight += 1
                return Lease(self, chosen, tokens, shared=True), 0.0
            chosen.state.mirror(taken.reason, taken.wait, self.clock())
            earliest = min(earliest, taken.wait)
        return None, earliest

    def _full(self, model: str, earliest: float, queue_full: bool = False) -> ApiError:
        retry = max(1, math.ceil(earliest)) if math.isfinite(earliest) else 1
        reason = "the wait queue is full" if queue_full else "no capacity freed up in time"
        return ApiError(429, f"Every controller for model {model!r} is at its limit ({reason}); "
                             f"retry after {retry}s.", code="rate_limit_exceeded",
                        headers={"Retry-After": str(retry)})

    def release(self, lease: Lease, used_tokens: Optional[float]) -> None:
        """End a lease and let waiting requests in."""
        lease.controller.state.release(lease.reserved, used_tokens, self.clock())
        if lease.shared and self.shared is not None:
            headers = lease.headers
            self.shared.settle(lease.controller, lease.reserved - used_tokens if used_tokens is not None else 0.0,
                               lease.succeeded, headers.remaining_requests if headers else None,
                               headers.remaining_tokens if headers else None)
        if self._waiters:
            self.pump()

    def pump(self) -> None:
        """Admit waiting requests in arrival order while controllers have room."""
        now = self.clock()
        earliest = math.inf
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            lease = self._admit(waiter.model, waiter.tokens, waiter.exclude, now)
            if lease is not None:
                self._waiters.remove(waiter)
                waiter.future.set_result(lease)
            else:
                earliest = min(earliest, self._earliest(waiter.model, waiter.tokens, waiter.exclude, now))
        if self._waiters and math.isfinite(earliest):
            self._arm(now + earliest)

    def _arm(self, when: float) -> None:
        """Pump again at `when` (clock time), keeping only the earliest timer."""
        if not math.isfinite(when) or (when >= self._timer_at and self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - self.clock()) + 0.001
        self._timer_at = when
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.pump()

    def others_usable(self, controller: Controller) -> bool:
        """Whether some other controller could still serve if `controller` were ejected."""
        now = self.clock()
        return any(c is not controller and c.state.status(now) == "ok" for c in self.controllers)

