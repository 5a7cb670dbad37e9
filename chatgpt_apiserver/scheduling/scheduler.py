"""Admission: which controller may take a request now, bounded fair waiting, retry budgets.

The scheduler asks the controller-state store (local, Redis or fallback: it does not know which) for
room, in the balancer's order. When no controller has room, the request waits in one queue served client
by client (`fair_queue.py`: interactive before batch, then by share, then in arrival order): a controller
that a waiter earlier in that order is waiting for is not given to a later one, so nobody is overtaken,
while a waiter for other controllers is not held up by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from ..controllers import Controller
from ..controllers.rate_headers import RateHeaders
from ..errors import ApiError
from ..state import ControllerStore, StoreUnavailable, Ticket
from ..state.store import OK, UNAVAILABLE
from .balancer import Balancer
from .fair_queue import ANONYMOUS, FairQueue, Tenant

log = logging.getLogger("chatgpt_apiserver.scheduler")


@dataclass(frozen=True)
class QueuePolicy:
    """How long and how many requests may wait for a controller to free up."""

    max_wait: float = 10.0
    max_size: int = 1000


class RetryBudget:
    """Retries earn `ratio` per request plus `per_second` over time, so an outage cannot multiply load."""

    def __init__(self, ratio: float = 0.2, per_second: float = 5.0, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.clock = clock
        self.updated = clock()
        self.configure(ratio, per_second)
        self.balance = self.capacity

    def configure(self, ratio: float, per_second: float) -> None:
        """Apply new settings (a reload), keeping what has been earned."""
        self.ratio = ratio
        self.per_second = per_second
        self.capacity = max(10.0, per_second * 10)
        if getattr(self, "balance", 0.0) > self.capacity:
            self.balance = self.capacity

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


class Lease(Ticket):
    """One admitted attempt on one controller: a slot, a request and reserved tokens, until released.

    `model` is the scope of the controller's breaker: the model, or the route of a call that names none.
    """

    __slots__ = ("_scheduler", "candidates", "rate", "rate_at", "released")

    def __init__(self, scheduler: Scheduler, controller: Controller, model: str, reserved: float, probe: bool,
                 store: Optional[ControllerStore], candidates: Sequence[Controller]) -> None:
        super().__init__(controller, model, reserved, probe, store)
        self._scheduler = scheduler
        self.candidates = candidates  # who else could have served it (for "never eject the last usable")
        self.released = False
        self.rate: Optional[RateHeaders] = None  # the upstream's rate-limit headers, believed at release
        self.rate_at = 0.0

    def release(self, used_tokens: Optional[float] = None) -> None:
        """Give back the slot and settle the tokens (None: keep the whole reservation)."""
        if not self.released:
            self.released = True
            self._scheduler.release(self, used_tokens)


@dataclass(eq=False)
class _Waiter:
    model: str
    tokens: float
    candidates: Sequence[Controller]
    exclude: Sequence[Controller]
    future: asyncio.Future[Lease]
    tenant: Tenant = ANONYMOUS
    finish: float = field(default=0.0)  # its place in the fair queue
    seq: int = 0


@dataclass
class _Tried:
    """What one admission round found when no controller took the request."""

    wait: float = math.inf  # until one that is full or cooling could take it
    unavailable: bool = True  # every candidate is disabled or ejected
    unavailable_wait: float = math.inf  # until the earliest of those comes back


class Scheduler:
    """Picks a controller with room for a request, or holds the request in the fair queue."""

    def __init__(self, controllers: list[Controller], store: ControllerStore, balancer: Balancer,
                 queue: QueuePolicy, clock: Callable[[], float],
                 on_wait: Optional[Callable[[float], None]] = None) -> None:
        self.controllers = controllers
        self.store = store
        self.balancer = balancer
        self.queue = queue
        self.clock = clock
        self.on_wait = on_wait
        self._waiters: FairQueue[_Waiter] = FairQueue()
        self._pump: Optional[asyncio.Task[None]] = None
        self._wake = asyncio.Event()

    @property
    def queue_length(self) -> int:
        """Requests waiting for a controller."""
        return len(self._waiters)

    def waiting(self, tenant: Tenant) -> int:
        """Requests of `tenant` waiting for a controller."""
        return self._waiters.waiting(tenant)

    def serving(self, model: str) -> list[Controller]:
        """Controllers configured for `model`."""
        return [c for c in self.controllers if c.serves(model)]

    def may_eject(self, controller: Controller, model: str, candidates: Sequence[Controller]) -> bool:
        """Rule R9: another of the controllers that could serve the call is neither disabled nor ejected."""
        store = self.store
        return any(c is not controller and store.health(c, model).status not in UNAVAILABLE for c in candidates)

    async def _try(self, model: str, tokens: float, candidates: Sequence[Controller], exclude: Sequence[Controller],
                   blocked: set[Controller]) -> Lease | _Tried:
        """One admission round over the untried candidates, in the balancer's order."""
        store = self.store
        tried = _Tried()
        healthy = []
        for controller in candidates:
            if controller in exclude:
                continue
            health = store.health(controller, model)
            if health.status == OK:
                if controller in blocked:
                    tried.unavailable = False
                else:
                    healthy.append(controller)
            elif health.status in UNAVAILABLE:
                tried.unavailable_wait = min(tried.unavailable_wait, health.wait)
            else:
                tried.unavailable = False
                tried.wait = min(tried.wait, health.wait)
        while healthy:
            chosen = self.balancer.pick(healthy)
            assert chosen is not None
            healthy.remove(chosen)
            try:
                admission = await store.admit(chosen, model, tokens)
            except StoreUnavailable:
                raise ApiError(503, "The shared controller state (Redis) is unavailable; retry shortly.",
                               code="shared_state_unavailable", headers={"Retry-After": "1"}) from None
            if admission.ok:
                return Lease(self, chosen, model, tokens, admission.probe, admission.store, candidates)
            if admission.reason in UNAVAILABLE:
                tried.unavailable_wait = min(tried.unavailable_wait, admission.wait)
            else:
                tried.unavailable = False
                tried.wait = min(tried.wait, admission.wait)
                blocked.add(chosen)
        return tried

    async def acquire(self, model: str, tokens: float, exclude: Sequence[Controller] = (),
                      candidates: Optional[Sequence[Controller]] = None, tenant: Tenant = ANONYMOUS) -> Lease:
        """A lease on one of `candidates` (default: the controllers for `model`) with room, waiting up to the
        queue policy's bound for one to free up, in `tenant`'s place of the fair queue. `model` is also the
        scope of breakers and cooldown waits."""
        if candidates is None:
            candidates = self.serving(model)
        if not self._waiters:
            found = await self._try(model, tokens, candidates, exclude, set())
            if isinstance(found, Lease):
                return found
            tried = found
            if tried.unavailable:
                raise self._unavailable(model, tried.unavailable_wait)
            if math.isfinite(tried.wait) and tried.wait > self.queue.max_wait:
                raise self._full(model, tried.wait)
        if len(self._waiters) >= self.queue.max_size:
            raise self._full(model, 1.0, queue_full=True)
        if tenant.max_waiting is not None and self._waiters.waiting(tenant) >= tenant.max_waiting:
            raise ApiError(429, f"The client {tenant.name!r} has {tenant.max_waiting} requests waiting, its share of "
                                f"the queue; retry after 1s.", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        started = self.clock()
        waiter = _Waiter(model, tokens, candidates, exclude, asyncio.get_running_loop().create_future(), tenant)
        self._waiters.push(waiter)
        self._kick()
        try:
            async with asyncio.timeout(self.queue.max_wait):
                lease = await waiter.future
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                return waiter.future.result()  # admitted just as the wait ran out
            raise self._full(model, self._retry_in(model, candidates, exclude)) from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                waiter.future.result().release()  # admitted just as the client went away
            raise
        finally:
            self._waiters.remove(waiter)
        if self.on_wait is not None:
            self.on_wait(self.clock() - started)
        return lease

    def _retry_in(self, model: str, candidates: Sequence[Controller], exclude: Sequence[Controller]) -> float:
        waits = [self.store.health(c, model).wait for c in candidates if c not in exclude]
        finite = [w for w in waits if 0 < w < math.inf]
        return min(finite) if finite else 1.0

    def _full(self, model: str, earliest: float, queue_full: bool = False) -> ApiError:
        retry = max(1, math.ceil(earliest)) if math.isfinite(earliest) else 1
        reason = "the wait queue is full" if queue_full else "no capacity freed up in time"
        return ApiError(429, f"Every controller for model {model!r} is at its limit ({reason}); "
                             f"retry after {retry}s.", code="rate_limit_exceeded",
                        headers={"Retry-After": str(retry)})

    def _unavailable(self, model: str, earliest: float) -> ApiError:
        # No candidate can take it before then (or ever, until a reload): an SDK's retry would not help.
        headers = {"x-should-retry": "false"}
        when = ""
        if math.isfinite(earliest):
            headers["Retry-After"] = str(max(1, math.ceil(earliest)))
            when = f"; the earliest is probed again in {headers['Retry-After']}s"
        return ApiError(503, f"Every controller for model {model!r} is failing or disabled{when}.",
                        code="upstream_unavailable", headers=headers)

    def release(self, lease: Lease, used_tokens: Optional[float]) -> None:
        """End a lease and let waiting requests in."""
        rate = lease.rate
        self.store.release(lease, used_tokens, rate, self.clock() - lease.rate_at if rate is not None else 0.0)
        if self._waiters:
            self._kick()

    def pump(self) -> None:
        """Look at the waiting requests again (after a reload changed the controllers)."""
        if self._waiters:
            self._kick()

    def _kick(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._serve_waiters())
        else:
            self._wake.set()

    async def _serve_waiters(self) -> None:
        """Admit waiting requests in the fair queue's order while controllers have room; sleep until one might."""
        while self._waiters:
            self._wake.clear()
            earliest = math.inf
            blocked: set[Controller] = set()
            for waiter in self._waiters:
                if waiter.future.done():
                    self._waiters.remove(waiter)
                    continue
                found: Lease | _Tried | ApiError
                try:
                    found = await self._try(waiter.model, waiter.tokens, waiter.candidates, waiter.exclude, blocked)
                except ApiError as error:
                    found = error
                if waiter.future.done():  # the client left or the wait ran out meanwhile
                    if isinstance(found, Lease):
                        found.release(None)
                    continue
                if isinstance(found, Lease):
                    self._waiters.remove(waiter, served=True)
                    waiter.future.set_result(found)
                elif isinstance(found, ApiError):
                    self._waiters.remove(waiter)
                    waiter.future.set_exception(found)
                elif found.unavailable:
                    self._waiters.remove(waiter)
                    waiter.future.set_exception(self._unavailable(waiter.model, found.unavailable_wait))
                else:
                    earliest = min(earliest, found.wait)
                if len(blocked) >= len(self.controllers):
                    break  # every controller is spoken for by an earlier waiter
            if not self._waiters:
                return
            poll = self.store.poll_interval
            timeout = min(earliest, poll) if poll is not None else earliest
            if math.isinf(timeout):
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout + 0.001)

    async def close(self) -> None:
        """Stop serving the queue."""
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
