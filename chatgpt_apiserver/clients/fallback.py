"""The fallback client store: Redis while it answers, and the outage rule (`redis_fallback`) for clients.

`local`: each instance admits clients from a local store holding 1/N of every limit (N: the instances whose
heartbeats it last saw), with each budget period's spending starting from what Redis last reported. What is
spent meanwhile is added to Redis when it answers again (or as it is settled, for requests that end after
that), so usage counts and budgets lose nothing; the slots taken meanwhile and still held are counted there
too, until they end. `refuse`:
while Redis is away, admissions raise `StoreUnavailable` (the client gets 503).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from ..state.fallback import AdoptedSlots
from ..state.store import StoreUnavailable
from .local import LocalClientStore
from .redis import RedisClientStore
from .store import USAGE_FIELDS, Charge, ClientAdmission, ClientStore, ClientTicket, ClientView, Period, Plan

log = logging.getLogger("chatgpt_apiserver.clients")

MAX_PENDING = 100_000  # rows of spending kept for Redis during an outage (clients x models x periods)


class FallbackClientStore(ClientStore):
    """Redis, or the outage rule while Redis is away."""

    def __init__(self, redis: RedisClientStore, local: LocalClientStore, mode: str) -> None:
        self.redis = redis
        self.local = local
        self.mode = mode  # "local" or "refuse"
        self.plans: dict[str, Plan] = {}
        # Spending and usage settled while Redis was away: (client, period, period end, label) -> row + tokens.
        self.pending: dict[tuple[str, str, float, str], list[int]] = {}
        self.adopted = AdoptedSlots()
        redis.link.watchers.append(self._changed)
        redis.link.on_lost.append(self.redis.resume)  # (its slots; a client's buckets start full again)

    def configure(self, plans: Sequence[Plan]) -> None:
        self.plans = {plan.name: plan for plan in plans}
        self.redis.configure(plans)
        self.local.configure(plans)

    def _changed(self, available: bool, instances: int) -> None:
        if not available:
            self.local.rescale(1.0 / instances)
            return
        for name in self.plans:
            taken = self.adopted.adopt(name, self.local.held(name))
            if taken:
                self.redis.adopt(name, taken)
        self.redis.resume()
        pending, self.pending = self.pending, {}
        for (name, period, end, label), row in pending.items():
            plan = self.plans.get(name)
            if plan is not None:
                self.redis.add(plan, Period(period, end), Charge.of(
                    label, None, tokens=row[6], prompt=row[2], cached=row[3], completion=row[4], nano=row[5],
                    requests=row[0], errors=row[1]))
        if pending:
            log.warning("Redis is back: added the spending of %d client/model row(s) settled meanwhile", len(pending))

    async def admit(self, plan: Plan, tokens: float, period: Period) -> ClientAdmission:
        if self.redis.available:
            try:
                return await self.redis.admit(plan, tokens, period)
            except StoreUnavailable:
                pass  # it has just gone away: the outage rule applies below
        if self.mode == "refuse":
            raise StoreUnavailable("Redis is unreachable")
        known = self.redis.spent.get(plan.name)
        if known is not None:
            self.local.seed_spent(plan.name, *known)
        admission = self.local.admit_now(plan, tokens, period)
        return replace(admission, store=self.local)  # (a copy: the local store's admissions may be shared)

    def settle(self, ticket: ClientTicket, charge: Charge) -> None:
        store = ticket.store or self.redis
        if store is self.redis and self.redis.available:
            self.redis.settle(ticket, charge)
            return
        if store is self.redis:
            self.redis.settle(ticket, charge)  # keeps this instance's slot count; the call itself is dropped
            self.local.add(ticket.plan.name, ticket.period.name if ticket.plan.period else "", charge.label,
                           charge.row, charge.tokens)
        else:
            self.local.settle(ticket, charge)
            if self.adopted.end_one(ticket.plan.name):  # held in Redis too, since it came back
                self.redis.settle_adopted(ticket, charge)  # (dropped if Redis has gone again: see below)
                if self.redis.available:
                    return
            elif self.redis.available:
                self.redis.add(ticket.plan, ticket.period, charge)  # it ended after Redis came back
                return
        key = (ticket.plan.name, ticket.period.name if ticket.plan.period else "", ticket.period.end, charge.label)
        row = self.pending.get(key)
        if row is None:
            if len(self.pending) >= MAX_PENDING:
                log.error("too much spending settled while Redis is away; a row is not carried over")
                return
            row = self.pending[key] = [0] * (len(USAGE_FIELDS) + 1)
        for index, value in enumerate((*charge.row, charge.tokens)):
            row[index] += value

    def held(self, name: str) -> int:
        return self.redis.held(name) + self.local.held(name) - self.adopted.count(name)

    async def views(self, plans: Sequence[Plan], period: dict[str, Period]) -> dict[str, ClientView]:
        if self.redis.available:
            try:
                return await self.redis.views(plans, period)
            except StoreUnavailable:
                pass
        return await self.local.views(plans, period)
