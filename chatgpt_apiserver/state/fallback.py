"""The fallback store: Redis while it answers, and the outage rule (`redis_fallback`) in one place.

`local`: each instance falls back to a local store holding 1/N of every limit (N: the instances whose
heartbeats it last saw), starting from the last levels Redis reported, scaled to 1/N, so a flapping Redis
hands out no fresh burst. When Redis answers again, this instance's slot counts are restored there, the
slots it took locally meanwhile and still holds included (they are freed there too, as they end), and the
local levels (times N) are carried back: a level is only ever lowered by that. `refuse`: while Redis
is away, admissions raise `StoreUnavailable`, which the scheduler answers with 503.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from .local import LocalStore
from .redis import RedisStore
from .rules import Policy
from .store import Admission, ControllerStore, ControllerView, Health, StoreUnavailable, Ticket

if TYPE_CHECKING:
    from ..controllers import Controller
    from ..controllers.rate_headers import RateHeaders

log = logging.getLogger("chatgpt_apiserver.state")


class AdoptedSlots:
    """Slots a local store took while Redis was away, per controller or client, that Redis was told of on its
    return: each is freed in both stores as it ends."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def adopt(self, name: str, held: int) -> int:
        """`held` slots are held locally for `name`: how many of them Redis has not been told of yet."""
        taken = held - self.counts.get(name, 0)
        if taken <= 0:
            return 0
        self.counts[name] = held
        return taken

    def end_one(self, name: str) -> bool:
        """A local slot of `name` ended: whether it was one Redis was told of (and must free too)."""
        count = self.counts.get(name, 0)
        if count > 1:
            self.counts[name] = count - 1
        elif count:
            del self.counts[name]
        return count > 0

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)


class FallbackStore(ControllerStore):
    """Redis, or the outage rule while Redis is away."""

    def __init__(self, redis: RedisStore, local: LocalStore, mode: str) -> None:
        self.redis = redis
        self.local = local
        self.mode = mode  # "local" or "refuse"
        self.controllers: list[Controller] = []
        self.adopted = AdoptedSlots()
        redis.link.on_change = self._changed
        redis.link.on_lost.append(self._lost)

    @property
    def poll_interval(self) -> Optional[float]:  # type: ignore[override]
        return self.redis.poll_interval if self.redis.available else None

    @property
    def admitting(self) -> bool:
        return self.redis.available or self.mode == "local"

    @property
    def active(self) -> ControllerStore:
        """The store that answers now."""
        return self.redis if self.redis.available else self.local

    def configure(self, controllers: Sequence[Controller], policy: Policy) -> None:
        self.controllers = list(controllers)
        self.redis.configure(controllers, policy)
        self.local.configure(controllers, policy)

    async def start(self) -> None:
        await self.redis.link.start()

    async def close(self) -> None:
        await self.redis.link.close()

    def _changed(self, available: bool, instances: int) -> None:
        """Redis went away or came back: move the levels across, scaled, so no burst appears."""
        if not available:
            what = (f"falling back to local buckets at 1/{instances} of each limit"
                    if self.mode == "local" else "refusing requests with 503")
            log.error("shared controller state is unavailable; %s until Redis returns", what)
            self.local.rescale(1.0 / instances)
            for controller in self.controllers:
                requests, tokens = self.redis.levels(controller)
                self.local.seed(controller.name, _times(requests, 1.0 / instances), _times(tokens, 1.0 / instances))
            return
        levels = {}
        for controller in self.controllers:
            requests, tokens = self.local.levels(controller)
            levels[controller.name] = (_times(requests, instances), _times(tokens, instances))
            taken = self.adopted.adopt(controller.name, self.local.held(controller))
            if taken:
                self.redis.adopt(controller, taken)
        self.redis.resume(self.controllers, levels)

    def _lost(self) -> None:
        """Redis forgot the shared state between two heartbeats: this instance's slots go back, and the
        lowest levels it saw since the heartbeat before (a fresh bucket a request took from meanwhile is no guide)."""
        self.redis.resume(self.controllers, {c.name: self.redis.low_levels(c) for c in self.controllers})

    async def admit(self, controller: Controller, model: str, tokens: float) -> Admission:
        if self.redis.available:
            try:
                return await self.redis.admit(controller, model, tokens)
            except StoreUnavailable:
                pass  # it has just gone away: the outage rule applies below
        if self.mode == "refuse":
            raise StoreUnavailable("Redis is unreachable")
        admission = self.local.admit_now(controller, model, tokens)
        return Admission(admission.ok, admission.wait, admission.reason, admission.probe, self.local)

    def release(self, ticket: Ticket, used_tokens: Optional[float], rate: Optional[RateHeaders],
                rate_age: float) -> None:
        store = ticket.store or self.redis
        if store is self.local:
            if self.adopted.end_one(ticket.controller.name):
                # Only the slot: its tokens came from the local bucket, and no shared probe is its own.
                self.redis.release(Ticket(ticket.controller, ticket.model, ticket.reserved), None, None, 0.0)
        elif not self.redis.available:
            self.redis.release(ticket, used_tokens, rate, rate_age)  # keeps the mirror's counts right
            return
        store.release(ticket, used_tokens, rate, rate_age)

    def succeeded(self, controller: Controller, model: str) -> None:
        self.active.succeeded(controller, model)

    def failed(self, controller: Controller, model: str, whole: bool, may_eject: bool) -> float:
        return self.active.failed(controller, model, whole, may_eject)

    def rate_limited(self, controller: Controller, seconds: float) -> None:
        self.active.rate_limited(controller, seconds)

    def disable(self, controller: Controller, model: str, seconds: float, reason: str) -> None:
        self.active.disable(controller, model, seconds, reason)

    def clear_disables(self, controller: Controller) -> None:
        self.local.clear_disables(controller)
        self.redis.clear_disables(controller)

    def health(self, controller: Controller, model: str) -> Health:
        return self.active.health(controller, model)

    def in_flight(self, controller: Controller) -> int:
        return self.active.in_flight(controller)

    def held(self, controller: Controller) -> int:
        return self.redis.held(controller) + self.local.held(controller) - self.adopted.count(controller.name)

    def headroom(self, controller: Controller) -> float:
        return self.active.headroom(controller)

    async def views(self, controllers: Sequence[Controller]) -> dict[str, ControllerView]:
        if self.redis.available:
            try:
                return await self.redis.views(controllers)
            except StoreUnavailable:
                pass
        return await self.local.views(controllers)


def _times(value: Optional[float], factor: float) -> Optional[float]:
    return value * factor if value is not None else None
