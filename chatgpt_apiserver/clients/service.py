"""The gateway's clients: who is calling, whether they may make this request now, and what they used.

Handlers call `find` on the headers, `admit_now` (else `admit`, for a store that waits on Redis) once the
call is read (before any controller is asked), and `settle` when the answer is over. A refusal is an
`ApiError` in OpenAI's shape, naming the client's limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Optional

from ..config.clients import usd
from ..endpoints.usage import Usage
from ..errors import ApiError
from ..state.store import StoreUnavailable
from .headers import rate_limit_headers
from .metrics import Tally
from .prices import PriceTable
from .registry import Client, Registry, queue_bound
from .rules import BUDGET, BUSY, MODEL_REQUESTS, MODEL_TOKENS, REQUESTS, left_of, period_of
from .store import (
    NO_HEADERS,
    NO_PERIOD,
    USAGE_FIELDS,
    Charge,
    ClientAdmission,
    ClientStore,
    ClientTicket,
    Period,
    Plan,
)

if TYPE_CHECKING:
    from ..config.settings import Settings
    from .state_file import StateFile

log = logging.getLogger("chatgpt_apiserver.clients")

MAX_PRICED = 4096  # models remembered as priced or not (for the admin view)


def _when(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,g}"


class Clients:
    """Configured clients, their store and this instance's counts (see the module docstring)."""

    def __init__(self, settings: Settings, store: ClientStore, state_file: Optional[StateFile] = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.state_file = state_file
        self.wall = wall
        self.tally = Tally()  # refusals; usage rows too when the store's rows are not this process's own
        self._tallied = store.counted_here() is None
        self.registry = Registry()
        self.prices = PriceTable({})
        self.priced: dict[str, bool] = {}  # model label -> whether its cost was known
        self.seen_spent: dict[str, tuple[str, int, int]] = {}  # client -> period, tokens, nano (last seen here)
        self._periods: dict[str, Period] = {}
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Take the clients of `settings` (at start and on a reload): unchanged names keep their state, a removed
        client's key stops working at once, its requests in flight finish."""
        self.prices = PriceTable.load(settings.prices)
        bound = settings.max_queue_size
        clients = [Client(spec, queue_bound(bound, settings.max_client_queue_share, len(settings.clients)))
                   for spec in settings.clients]
        before = set(self.registry.by_name)
        self.registry = Registry(clients)
        self.named = any(client.spec.named for client in clients)  # (then only an admin_key opens /admin)
        self.store.configure([client.plans[""] for client in clients])
        removed = before - set(self.registry.by_name)
        self.tally.forget(removed)
        for name in removed:
            self.seen_spent.pop(name, None)
        if before and (removed or set(self.registry.by_name) - before):
            log.info("clients: added %s; removed %s", sorted(set(self.registry.by_name) - before) or "none",
                     sorted(removed) or "none")

    @property
    def enabled(self) -> bool:
        """Whether any client is configured (else every request is anonymous and nothing is accounted)."""
        return bool(self.registry)

    def find(self, authorization: Optional[str]) -> Optional[Client]:
        """The client an `Authorization` header names, if any."""
        return self.registry.find(authorization)

    def period(self, kind: str) -> Period:
        """The current budget period of `kind` ("" : none)."""
        if not kind:
            return NO_PERIOD
        now = self.wall()
        found = self._periods.get(kind)
        if found is None or now >= found.end:
            found = self._periods[kind] = Period(*period_of(kind, now))
        return found

    async def admit(self, client: Client, model: str, label: str, tokens: float,
                    takes_model: bool = True) -> ClientTicket:
        """Admit a request of `client` for `model` reserving `tokens`, or raise the client's own refusal.

        `takes_model`: the endpoint's request names a model (one that names none is left to the upstream's
        default, which an allow-list cannot vouch for); False for follow-ups routed by the id they name."""
        plan, period = self._plan(client, model, takes_model)
        try:
            admission = await self.store.admit(plan, tokens, period)
        except StoreUnavailable:
            raise ApiError(503, "The shared client state (Redis) is unavailable; retry shortly.",
                           code="shared_state_unavailable", headers={"Retry-After": "1"}) from None
        return self._ticket(client, plan, period, admission, model, label, tokens)

    def admit_now(self, client: Client, model: str, label: str, tokens: float,
                  takes_model: bool = True) -> Optional[ClientTicket]:
        """`admit` without a coroutine when the store decides at once (in this process); None: use `admit`."""
        store = self.store
        if not store.decides_now:
            return None
        if client.plain:  # nothing to check or to tell: a ticket for its settlement (C4 admits what checks nothing)
            plan = client.plans[""]
            return ClientTicket(plan, tokens, NO_PERIOD, store.admit_now(plan, tokens, NO_PERIOD).store, label)
        plan, period = self._plan(client, model, takes_model)
        return self._ticket(client, plan, period, store.admit_now(plan, tokens, period), model, label, tokens)

    def _plan(self, client: Client, model: str, takes_model: bool) -> tuple[Plan, Period]:
        """The plan and budget period that admit this request, after the client's model allow-list."""
        spec = client.spec
        if spec.models is not None and (model not in spec.models if model else takes_model):
            self.tally.refused(client.name, "model")
            allowed = ", ".join(sorted(spec.models))
            raise ApiError(403, f"The client {client.name!r} may not use the model {model!r}; it may use "
                                f"{allowed}." if model else
                           f"The request names no model, and the client {client.name!r} may only use its models "
                           f"({allowed}); name one in 'model'.", type="permission_error", param="model",
                           code="model_not_allowed")
        plan = client.plan(model)
        return plan, self.period(plan.period) if plan.period else NO_PERIOD

    def _ticket(self, client: Client, plan: Plan, period: Period, admission: ClientAdmission, model: str, label: str,
                tokens: float) -> ClientTicket:
        """The ticket of an admission, or the client's refusal raised."""
        if plan.period:
            self.seen_spent[client.name] = (period.name, *admission.spent)
        headers = rate_limit_headers(left_of(plan.buckets, admission.levels, True),
                                     left_of(plan.buckets, admission.levels, False)) if plan.buckets else NO_HEADERS
        if not admission.ok:
            if client.name in self.registry.by_name:  # (not when a reload removed it meanwhile)
                self.tally.refused(client.name, admission.reason)
            raise self._refusal(client, admission, period, model, tokens, headers)
        return ClientTicket(plan, tokens, period, admission.store, label, headers)

    async def levels(self, client: Client, model: str = "") -> dict[str, str]:
        """The x-ratelimit-* headers of `client` as its buckets stand, taking nothing (rule C6, for answers
        that admitted nothing: a bad request, a refused model, the model list)."""
        plan = client.plan(model)
        if not plan.buckets:
            return {}
        try:
            found = (await self.store.views([plan], {plan.name: NO_PERIOD}))[plan.name].levels
        except StoreUnavailable:
            return {}
        levels = tuple(found.get(rule.field, rule.capacity) for rule in plan.buckets)
        return rate_limit_headers(left_of(plan.buckets, levels, True), left_of(plan.buckets, levels, False))

    def _refusal(self, client: Client, admission: ClientAdmission, period: Period, model: str, tokens: float,
                 headers: Mapping[str, str]) -> ApiError:
        name, reason = client.name, admission.reason
        if reason == BUDGET:
            budget = client.spec.budget
            assert budget is not None
            spent_tokens, spent_nano = admission.spent
            parts = []
            if budget.tokens is not None and spent_tokens >= budget.tokens:
                parts.append(f"{spent_tokens:,} of {budget.tokens:,} tokens")
            if budget.usd is not None and spent_nano >= round(budget.usd * 1e9):
                parts.append(f"{usd(spent_nano / 1e9)} of {usd(budget.usd)}")
            renews = max(1, math.ceil(period.end - self.wall()))
            return ApiError(429, f"The client {name!r} has used its budget for this {budget.period} "
                                 f"({' and '.join(parts)}); it renews at {_when(period.end)}.",
                            type="insufficient_quota", code="insufficient_quota",
                            headers={**headers, "Retry-After": str(renews), "x-should-retry": "false"})
        if reason == BUSY:
            limit = client.spec.max_concurrency
            return ApiError(429, f"The client {name!r} has {limit} requests in flight, its limit "
                                 f"(max_concurrency); retry when one has finished.", code="rate_limit_exceeded",
                            headers={**headers, "Retry-After": "1"})
        by_model = reason in (MODEL_REQUESTS, MODEL_TOKENS)
        limits = client.spec.model_limits.get(client.limited_as(model)) if by_model else None
        source = limits if limits is not None else client.spec.limits
        if reason in (REQUESTS, MODEL_REQUESTS):
            what = f"{_number(source.rpm or 0)} requests per minute"
        else:
            what = f"{_number(source.tpm or 0)} tokens per minute (this request reserves {tokens:,.0f})"
        scope = f" for the model {model!r}" if limits is not None else ""
        wait = admission.wait
        shown = f"{wait:.1f}s" if math.isfinite(wait) else "a while"
        extra = {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))} \
            if math.isfinite(wait) else {"Retry-After": "60"}
        return ApiError(429, f"The client {name!r} is over its limit of {what}{scope}; retry after {shown}.",
                        code="rate_limit_exceeded", headers={**headers, **extra})

    def settle(self, ticket: ClientTicket, usage: Optional[Usage], used: Optional[float], error: bool,
               models: Iterable[str] = ()) -> None:
        """End an admitted request: `usage` as its answer reported it, `used` the tokens to settle its
        reservation against (None: unknown), `models` the names to price it by (the public one first)."""
        if ticket.settled:
            return
        ticket.settled = True
        label = ticket.label
        if usage is None:
            charge = Charge(label, used, 0, (1, int(error), 0, 0, 0, 0))
        else:
            price = self.prices.prices.get(label) or self.prices.find(label, *models)  # (mostly: the label's own)
            known, priced = price is not None, self.priced
            if priced.get(label) is not known and (label in priced or len(priced) < MAX_PRICED):
                priced[label] = known
            charge = Charge(label, used, usage.tokens, (
                1, int(error), usage.prompt, usage.cached, usage.completion,
                PriceTable.nano(price, usage) if price is not None else 0))
        self.store.settle(ticket, charge)
        if self._tallied or ticket.period.name:
            self._count(ticket, charge)

    def _count(self, ticket: ClientTicket, charge: Charge) -> None:
        """What this process keeps of a settled request beside the store: the tally's row (when the store's rows
        are not its own) and the budget spending it last saw."""
        name = ticket.plan.name
        if name not in self.registry.by_name:
            return  # removed by a reload while this request ran: its metrics went with it
        if self._tallied:
            self.tally.count(name, charge)
        seen = self.seen_spent.get(name)
        if seen is not None and seen[0] == ticket.period.name:
            self.seen_spent[name] = (seen[0], seen[1] + charge.tokens, seen[2] + charge.nano)

    def usage_here(self) -> Mapping[str, Mapping[str, list[int]]]:
        """This process's usage rows per configured client (for the metrics)."""
        counted = self.store.counted_here()
        if counted is None:
            return self.tally.usage
        names = self.registry.by_name  # (a client a reload removed may still be finishing a request)
        return {name: rows for name, rows in counted.items() if name in names}

    def budgets(self) -> list[tuple[str, str, float, float]]:
        """(client, kind, spent, budget) as this instance last saw them, for the metrics."""
        out: list[tuple[str, str, float, float]] = []
        for name, client in self.registry.by_name.items():
            budget = client.spec.budget
            if budget is None:
                continue
            seen = self.seen_spent.get(name)
            current = seen is not None and seen[0] == self.period(budget.period).name
            tokens, nano = (seen[1], seen[2]) if current and seen is not None else (0, 0)
            if budget.tokens is not None:
                out.append((name, "tokens", float(tokens), float(budget.tokens)))
            if budget.usd is not None:
                out.append((name, "usd", nano / 1e9, budget.usd))
        return out

    async def describe(self, waiting: Callable[[Client], int]) -> dict[str, Any]:
        """Every client's limits, live state, budget and usage (the admin view): never a key or a digest."""
        clients = list(self.registry.by_name.values())
        plans = [client.view_plan for client in clients]
        periods = {client.name: self.period(client.plans[""].period) for client in clients}
        views = await self.store.views(plans, periods)
        unpriced: set[str] = set()
        described = []
        for client in clients:
            view = views[client.name]
            usage = {label: self._usage(label, row) for label, row in sorted(view.usage.items())}
            unpriced.update(label for label, row in usage.items() if not row["priced"] and row["requests"])
            described.append(self._client_view(client, view, usage, periods[client.name], waiting(client)))
        return {"clients": described, "prices_as_of": self.prices.as_of, "unpriced_models": sorted(unpriced)}

    def _usage(self, label: str, row: list[int]) -> dict[str, Any]:
        counts = dict(zip(USAGE_FIELDS, row, strict=True))
        priced = self.priced.get(label, self.prices.find(label) is not None)
        return {"requests": counts["requests"], "errors": counts["errors"], "prompt_tokens": counts["prompt"],
                "cached_tokens": counts["cached"], "completion_tokens": counts["completion"],
                # Tokens are counted either way; a model with no known price has no cost to show.
                "cost_usd": round(counts["nano"] / 1e9, 6) if priced else None, "priced": priced}

    def _client_view(self, client: Client, view: Any, usage: dict[str, dict[str, Any]], period: Period,
                     waiting: int) -> dict[str, Any]:
        spec = client.spec
        total = {key: sum(row[key] for row in usage.values())
                 for key in ("requests", "errors", "prompt_tokens", "cached_tokens", "completion_tokens")}
        total["cost_usd"] = round(sum(row["cost_usd"] or 0 for row in usage.values()), 6)
        buckets = {}
        for rule in client.view_plan.buckets:
            kind = "requests" if rule.field.endswith("r") else "tokens"
            label = kind if rule.field in ("r", "t") else f"{rule.field[2:-2]} {kind}"
            level = view.levels.get(rule.field, rule.capacity)
            buckets[label] = {"level": round(level, 2), "capacity": rule.capacity, "per_minute": rule.capacity}
        out: dict[str, Any] = {
            "name": client.name, "priority": spec.priority, "share": spec.share, "key_from": spec.key_source,
            "limits": {"rpm": spec.limits.rpm, "tpm": spec.limits.tpm, "max_concurrency": spec.max_concurrency},
            "models": sorted(spec.models) if spec.models is not None else None,
            "model_limits": {model: {"rpm": limit.rpm, "tpm": limit.tpm}
                             for model, limit in sorted(spec.model_limits.items())},
            "in_flight": view.in_flight, "waiting": waiting, "buckets": buckets, "budget": None,
            "usage": {"models": usage, "total": total},
            "refused": dict(sorted(self.tally.refusals.get(client.name, {}).items())),
        }
        budget = spec.budget
        if budget is not None:
            shown: dict[str, Any] = {"period": budget.period, "current": period.name, "renews_at": _when(period.end)}
            exhausted = False
            if budget.tokens is not None:
                shown["tokens"] = {"limit": budget.tokens, "spent": view.spent_tokens,
                                   "left": max(0, budget.tokens - view.spent_tokens)}
                exhausted |= view.spent_tokens >= budget.tokens
            if budget.usd is not None:
                spent = round(view.spent_nano / 1e9, 6)
                shown["usd"] = {"limit": budget.usd, "spent": spent, "left": round(max(0.0, budget.usd - spent), 6)}
                exhausted |= view.spent_nano >= round(budget.usd * 1e9)
            shown["exhausted"] = exhausted
            out["budget"] = shown
        return out

    async def start(self) -> None:
        """Read the state file and start writing it (without Redis), and start the store."""
        if self.state_file is not None:
            self.state_file.load()
            self.state_file.start()
        await self.store.start()

    async def close(self) -> None:
        """Write the state file a last time and stop the store."""
        if self.state_file is not None:
            await self.state_file.close()
        await self.store.close()
