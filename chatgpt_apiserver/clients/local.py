"""The local client store: the rules of `rules.py` in this process's memory, with time injected for exact tests.

`snapshot()` and `restore()` carry the state across a restart (`state_file.py` writes them to disk).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from ..state.buckets import TokenBucket
from .rules import BUDGET, BUSY, REQUEST_KINDS, follows, over_budget, replaces
from .store import (
    ADMITTED,
    USAGE_FIELDS,
    Charge,
    ClientAdmission,
    ClientStore,
    ClientTicket,
    ClientView,
    Period,
    Plan,
    add_row,
)

ZERO_ROW = (0,) * len(USAGE_FIELDS)


class _Bucket:
    """A token bucket and the limit it was built for (a reload that changes the limit rebuilds it)."""

    __slots__ = ("bucket", "built_for")

    def __init__(self, bucket: TokenBucket, built_for: tuple[float, float]) -> None:
        self.bucket = bucket
        self.built_for = built_for


class LocalClient:
    """Everything the local store holds for one client."""

    __slots__ = ("buckets", "in_flight", "period", "saved", "spent_nano", "spent_tokens", "usage")

    def __init__(self) -> None:
        self.buckets: dict[str, _Bucket] = {}
        self.in_flight = 0
        self.period = ""
        self.spent_tokens = 0
        self.spent_nano = 0
        self.usage: dict[str, list[int]] = {}
        self.saved: dict[str, float] = {}  # bucket field -> its level as a fraction of its capacity, from disk

    def spend(self, period: str, tokens: int, nano: int) -> None:
        """C3: add to the period's spending; a later period starts from zero, an earlier one is over."""
        if period != self.period:
            if not follows(period, self.period):
                return  # admitted in a period that has ended since, or one a reload replaced: closed
            self.period, self.spent_tokens, self.spent_nano = period, 0, 0
        self.spent_tokens += tokens
        self.spent_nano += nano


class LocalClientStore(ClientStore):
    """Client state in this process. `fraction` scales every limit (1/N while Redis is away)."""

    decides_now = True

    def __init__(self, clock: Callable[[], float] = time.monotonic, fraction: float = 1.0) -> None:
        self.clock = clock
        self.fraction = fraction
        self.clients: dict[str, LocalClient] = {}
        self.dirty = False  # changed since the last snapshot
        # The usage rows restore() brought back, per client: counted before this process (see counted_here).
        self.restored: dict[str, dict[str, list[int]]] = {}

    def configure(self, plans: Sequence[Plan]) -> None:
        names = {plan.name for plan in plans}
        for name in [name for name, client in self.clients.items() if name not in names and not client.in_flight]:
            del self.clients[name]
            self.restored.pop(name, None)
        self.dirty = True

    def rescale(self, fraction: float) -> None:
        """Every limit at `fraction` of the configured one, keeping each bucket's fill (fallback transitions)."""
        self.fraction = fraction
        for client in self.clients.values():
            for held in client.buckets.values():
                held.built_for = (-1.0, -1.0)  # rebuilt at the next admission

    def _client(self, name: str) -> LocalClient:
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = LocalClient()
        return client

    def _bucket(self, client: LocalClient, field: str, rate: float, capacity: float, now: float) -> TokenBucket:
        """The bucket at `field`, built (or rebuilt, keeping its fill) for this limit at this store's fraction."""
        held = client.buckets.get(field)
        if held is not None and held.built_for == (rate, capacity):
            return held.bucket
        fraction = self.fraction
        bucket = TokenBucket(rate * 60 * fraction, capacity * fraction, now)
        if held is not None:
            old = held.bucket
            bucket.level = min(bucket.capacity, bucket.capacity * old.refill(now) / old.capacity)
        elif field in client.saved:
            bucket.level = min(bucket.capacity, bucket.capacity * client.saved.pop(field))
        client.buckets[field] = _Bucket(bucket, (rate, capacity))
        return bucket

    async def admit(self, plan: Plan, tokens: float, period: Period) -> ClientAdmission:
        return self.admit_now(plan, tokens, period)

    def admit_now(self, plan: Plan, tokens: float, period: Period) -> ClientAdmission:
        """`admit` without a coroutine (the local store never waits on I/O)."""
        client = self.clients.get(plan.name) or self._client(plan.name)
        if not plan.limited:  # nothing to check: only counted in flight
            client.in_flight += 1
            return ADMITTED
        now = self.clock()
        buckets = [self._bucket(client, rule.field, rule.rate, rule.capacity, now) for rule in plan.buckets]
        levels = tuple(bucket.refill(now) for bucket in buckets)
        spent = (0, 0)
        if plan.period:
            if replaces(period.name, client.period):
                client.period, client.spent_tokens, client.spent_nano = period.name, 0, 0
            spent = (client.spent_tokens, client.spent_nano)
            if over_budget(*spent, plan.budget_tokens, plan.budget_nano):
                return ClientAdmission(False, BUDGET, levels=levels, spent=spent)
        if plan.max_concurrency and client.in_flight >= max(1, int(plan.max_concurrency * self.fraction)):
            return ClientAdmission(False, BUSY, math.inf, levels=levels, spent=spent)
        amounts = plan.amounts(tokens)
        reason, wait = "", 0.0
        for rule, bucket, amount in zip(plan.buckets, buckets, amounts, strict=True):
            if not bucket.has(amount, now):
                reason = reason or rule.reason
                wait = max(wait, bucket.wait_for(amount, now))
        if reason:
            return ClientAdmission(False, reason, wait, levels=levels, spent=spent)
        for bucket, amount in zip(buckets, amounts, strict=True):
            bucket.take(amount, now)
        client.in_flight += 1
        self.dirty = True
        return ClientAdmission(True, levels=tuple(bucket.level for bucket in buckets), spent=spent)

    def settle(self, ticket: ClientTicket, charge: Charge) -> None:
        plan = ticket.plan
        client = self.clients.get(plan.name)
        if client is None:
            return  # removed by a reload while this request ran, and nothing else held
        if client.in_flight:
            client.in_flight -= 1
        if plan.limited:
            self._settle_limits(client, ticket, charge)
        add_row(client.usage, charge.label, charge.row)
        self.dirty = True

    def _settle_limits(self, client: LocalClient, ticket: ClientTicket, charge: Charge) -> None:
        """C1 and C3 of a settlement: the tokens bucket trued up to what was used, the budget charged."""
        plan = ticket.plan
        if charge.used is not None and plan.buckets:
            now = self.clock()
            delta = ticket.reserved - charge.used
            for rule in plan.buckets:
                held = client.buckets.get(rule.field)
                if held is not None and rule.reason not in REQUEST_KINDS and delta:
                    if delta > 0:
                        held.bucket.give(delta, now)
                    else:
                        held.bucket.take(-delta, now)
        if plan.period and ticket.period.name:
            client.spend(ticket.period.name, charge.tokens, charge.nano)

    def add(self, name: str, period: str, label: str, row: Sequence[int], tokens: int) -> None:
        """Add spending and usage without a request (carried over from another store)."""
        client = self._client(name)
        if period:
            client.spend(period, tokens, row[5])
        add_row(client.usage, label, row)
        self.dirty = True

    def seed_spent(self, name: str, period: str, tokens: int, nano: int) -> None:
        """Start a period's spending from what another store said (never lowering what is known here)."""
        client = self._client(name)
        if replaces(period, client.period):
            client.period, client.spent_tokens, client.spent_nano = period, tokens, nano
        elif period == client.period:
            client.spent_tokens, client.spent_nano = max(client.spent_tokens, tokens), max(client.spent_nano, nano)

    def held(self, name: str) -> int:
        client = self.clients.get(name)
        return client.in_flight if client is not None else 0

    def counted_here(self) -> dict[str, dict[str, list[int]]]:
        """The rows this process counted: the store's, less what restore() brought back. (A counter that went
        on from the state file would go back after a crash, which saved less than was scraped, and Prometheus
        would read the drop as a reset and the whole total as new.)"""
        counted: dict[str, dict[str, list[int]]] = {}
        for name, client in self.clients.items():
            before = self.restored.get(name)
            if before is None:
                if client.usage:
                    counted[name] = client.usage
                continue
            rows = {label: [now - then for now, then in zip(row, before.get(label, ZERO_ROW), strict=True)]
                    for label, row in client.usage.items()}
            rows = {label: row for label, row in rows.items() if any(row)}
            if rows:
                counted[name] = rows
        return counted

    async def views(self, plans: Sequence[Plan], period: dict[str, Period]) -> dict[str, ClientView]:
        return {plan.name: self.view_now(plan, period.get(plan.name)) for plan in plans}

    def view_now(self, plan: Plan, period: Optional[Period]) -> ClientView:
        """The view of one client (no I/O)."""
        client = self._client(plan.name)
        now = self.clock()
        view = ClientView(in_flight=client.in_flight, usage={k: list(v) for k, v in client.usage.items()})
        for rule in plan.buckets:
            if rule.field in client.saved:  # restored from the state file: as full as it was left
                self._bucket(client, rule.field, rule.rate, rule.capacity, now)
        for field, held in client.buckets.items():
            view.levels[field] = held.bucket.refill(now)
        if period is not None and period.name:
            view.period = period.name
            if client.period == period.name:
                view.spent_tokens, view.spent_nano = client.spent_tokens, client.spent_nano
        return view

    def snapshot(self) -> dict[str, Any]:
        """Usage, spending and bucket fills of every client, as plain data (bucket fills relative to capacity)."""
        now = self.clock()
        self.dirty = False
        out: dict[str, Any] = {}
        for name, client in self.clients.items():
            fills = {field: held.bucket.refill(now) / held.bucket.capacity
                     for field, held in client.buckets.items() if held.bucket.capacity}
            fills.update({field: fill for field, fill in client.saved.items() if field not in fills})
            out[name] = {"period": client.period, "spent": [client.spent_tokens, client.spent_nano],
                         "usage": client.usage, "fills": fills}
        return out

    def restore(self, clients: dict[str, Any], elapsed: float) -> None:
        """Take a snapshot back, `elapsed` seconds after it was made (the buckets refilled meanwhile)."""
        for name, data in clients.items():
            client = self._client(name)
            client.period = str(data.get("period", ""))
            client.spent_tokens, client.spent_nano = (int(value) for value in data.get("spent", (0, 0)))
            width = len(USAGE_FIELDS)  # a shorter row (an older file) gets zeros for the fields it lacks
            client.usage = {str(label): ([int(value) for value in row] + [0] * width)[:width]
                            for label, row in data.get("usage", {}).items()}
            self.restored[name] = {label: list(row) for label, row in client.usage.items()}
            # A bucket refills from empty to full in one minute: that much of its fill has come back.
            client.saved = {str(field): min(1.0, float(fill) + max(0.0, elapsed) / 60)
                            for field, fill in data.get("fills", {}).items()}
