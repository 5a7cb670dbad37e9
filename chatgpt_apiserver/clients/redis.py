"""The Redis client store: the rules of `rules.py` in Lua, shared by every instance of the gateway.

Keys (P = redis_prefix, N = client name; the braces keep one client's keys in one cluster slot):
  P:{client:N}:lim            hash of the client's buckets: field -> level, field@ -> when written
  P:{client:N}:inflight       hash instance -> slots held;  P:{client:N}:seen: instance -> its last heartbeat
  P:{client:N}:spent:<period> hash {tok, nano}: the spending of one budget period (expires a day after it)
  P:{client:N}:usage          hash "<model>|<count>" -> total (expires 400 days after its last change)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from ..state.redis_link import HEARTBEAT_TTL_MS, RedisLink
from .redis_scripts import CLIENT_SCRIPTS, USAGE_TTL_MS
from .rules import REQUEST_KINDS
from .store import (
    MAX_LABELS,
    USAGE_FIELDS,
    Charge,
    ClientAdmission,
    ClientStore,
    ClientTicket,
    ClientView,
    Period,
    Plan,
)

NOW = b"-1"  # "use Redis's clock"
SPENT_KEPT = 86_400.0  # seconds a period's spending stays readable after the period ends


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt(value: Optional[float]) -> bytes:
    return b"" if value is None else repr(value).encode()


class RedisClientStore(ClientStore):
    """Client state in Redis (see the module docstring)."""

    def __init__(self, link: RedisLink, wall: Callable[[], float] = time.time,
                 redis_clock: Optional[Callable[[], float]] = None) -> None:
        self.link = link
        self.wall = wall  # for how long a period's spending is kept
        self.redis_clock = redis_clock  # tests: a time in seconds passed to every script instead of TIME
        self.holding: dict[str, int] = {}  # client -> slots this instance holds
        self.spent: dict[str, tuple[str, int, int]] = {}  # client -> the period and spending Redis last reported
        link.add_scripts(CLIENT_SCRIPTS)
        link.beats.append(self.beat)

    @property
    def available(self) -> bool:
        """Whether Redis answers."""
        return self.link.available

    def _now(self) -> bytes:
        return NOW if self.redis_clock is None else b"%d" % round(self.redis_clock() * 1000)

    def _keys(self, name: str, period: str) -> tuple[bytes, ...]:
        tag = "client:" + name
        link = self.link
        return (link.key(tag, "lim"), link.key(tag, "inflight"), link.key(tag, "seen"),
                link.key(tag, "spent:" + period), link.key(tag, "usage"))

    def configure(self, plans: Sequence[Plan]) -> None:
        names = {plan.name for plan in plans}
        for name in [name for name, held in self.holding.items() if name not in names and not held]:
            del self.holding[name]

    async def admit(self, plan: Plan, tokens: float, period: Period) -> ClientAdmission:
        args: list[Any] = [self._now(), self.link.instance, b"%d" % plan.max_concurrency, b"%d" % HEARTBEAT_TTL_MS,
                           b"" if plan.budget_tokens is None else b"%d" % plan.budget_tokens,
                           b"" if plan.budget_nano is None else b"%d" % plan.budget_nano, b"%d" % len(plan.buckets)]
        for rule, amount in zip(plan.buckets, plan.amounts(tokens), strict=True):
            args += (rule.field, repr(rule.rate / 1000).encode(), repr(rule.capacity).encode(), repr(amount).encode(),
                     rule.reason)
        reply = await self.link.call("c_admit", self._keys(plan.name, period.name)[:4], args)
        ok, reason, wait_ms, spent_tokens, spent_nano, _in_flight, levels = reply
        if plan.period:
            self.spent[plan.name] = (period.name, int(spent_tokens), int(spent_nano))
        spent = (int(spent_tokens), int(spent_nano))
        shown = tuple(float(_text(level)) for level in levels)
        if int(ok):
            self.holding[plan.name] = self.holding.get(plan.name, 0) + 1
            return ClientAdmission(True, levels=shown, spent=spent)
        wait = float(_text(wait_ms))
        return ClientAdmission(False, _text(reason), math.inf if wait < 0 else wait / 1000, shown, spent)

    def settle(self, ticket: ClientTicket, charge: Charge) -> None:
        plan = ticket.plan
        name = plan.name
        self.holding[name] = max(0, self.holding.get(name, 0) - 1)
        self._send(plan, ticket.period, charge, release=True, delta=(
            ticket.reserved - charge.used if charge.used is not None else None))

    def adopt(self, name: str, slots: int) -> None:
        """Count `slots` the local store took for client `name` while Redis was away as this instance's
        (sent with `resume`); each ends with `settle_adopted`."""
        self.holding[name] = self.holding.get(name, 0) + slots

    def settle_adopted(self, ticket: ClientTicket, charge: Charge) -> None:
        """End an adopted ticket here: its slot, its spending and usage; not its tokens, which it reserved
        from a local bucket."""
        name = ticket.plan.name
        self.holding[name] = max(0, self.holding.get(name, 0) - 1)
        self._send(ticket.plan, ticket.period, charge, release=True, delta=None)

    def add(self, plan: Plan, period: Period, charge: Charge) -> None:
        """Add spending and usage without a request (carried over from an outage)."""
        self._send(plan, period, charge, release=False, delta=None)

    def _send(self, plan: Plan, period: Period, charge: Charge, release: bool, delta: Optional[float]) -> None:
        buckets = [rule for rule in plan.buckets if rule.reason not in REQUEST_KINDS] if delta else []
        args: list[Any] = [self._now(), self.link.instance, b"1" if release else b"0", b"%d" % len(buckets)]
        for rule in buckets:
            args += (rule.field, repr(rule.rate / 1000).encode(), repr(rule.capacity).encode(), repr(delta).encode())
        ttl = max(1000, round((period.end - self.wall() + SPENT_KEPT) * 1000)) if plan.period and period.name else 0
        args += (b"%d" % charge.tokens, b"%d" % charge.nano, b"%d" % ttl, charge.label, b"%d" % MAX_LABELS,
                 b"%d" % USAGE_TTL_MS, *(b"%d" % value for value in charge.row))
        self.link.send("c_settle", self._keys(plan.name, period.name), args)

    def held(self, name: str) -> int:
        return self.holding.get(name, 0)

    async def views(self, plans: Sequence[Plan], period: dict[str, Period]) -> dict[str, ClientView]:
        calls = []
        for plan in plans:
            args: list[Any] = [self._now(), b"%d" % HEARTBEAT_TTL_MS, b"%d" % len(plan.buckets)]
            for rule in plan.buckets:
                args += (rule.field, repr(rule.rate / 1000).encode(), repr(rule.capacity).encode())
            current = period.get(plan.name)
            calls.append(self.link.call("c_view", self._keys(plan.name, current.name if current else ""), args))
        replies = await asyncio.gather(*calls)
        views = {}
        for plan, reply in zip(plans, replies, strict=True):
            in_flight, spent_tokens, spent_nano, flat, levels = reply
            current = period.get(plan.name)
            view = ClientView(in_flight=int(in_flight))
            if current is not None and current.name:
                view.period, view.spent_tokens, view.spent_nano = current.name, int(spent_tokens), int(spent_nano)
            view.levels = {rule.field: float(_text(level)) for rule, level in zip(plan.buckets, levels, strict=True)}
            items = [_text(item) for item in flat]
            for field, value in zip(items[::2], items[1::2], strict=True):
                label, _, kind = field.rpartition("|")
                if kind in USAGE_FIELDS:
                    view.usage.setdefault(label, [0] * len(USAGE_FIELDS))[USAGE_FIELDS.index(kind)] = int(value)
            views[plan.name] = view
        return views

    async def beat(self) -> None:
        """With each heartbeat: keep this instance's slots alive."""
        for name, held in self.holding.items():
            if held:
                _lim, inflight, seen, _spent, _usage = self._keys(name, "")
                self.link.send("beat", (inflight, seen), (self._now(), self.link.instance, b"-1"))

    def resume(self) -> None:
        """Redis is back: restore this instance's slot counts."""
        for name, held in self.holding.items():
            _lim, inflight, seen, _spent, _usage = self._keys(name, "")
            self.link.send("beat", (inflight, seen), (self._now(), self.link.instance, b"%d" % held))
