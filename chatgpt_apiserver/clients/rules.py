"""The rules of client state, written once. `local.py` runs them in Python, `redis_scripts.py` in Lua.

tests/test_client_rules.py holds one table of events and expected states and runs it against both stores.

C1 Buckets. A client has a request bucket (`rpm`) and a token bucket (`tpm`); a model of its
   `model_limits` has a request and a token bucket of its own. Each refills continuously at
   `per_minute / 60` per second up to its capacity (the per-minute figure). An admission needs
   `level >= min(amount, capacity)` in every bucket that applies (requests: amount 1; tokens: the
   request's estimate) and then takes the amount from each, all or none; a level may go below zero.
C2 Concurrency. The client's requests in flight over every live instance must be below
   `max_concurrency`. A slot held by an instance whose heartbeat is older than `heartbeat_ttl` is freed.
C3 Budget. Spending is counted per UTC calendar period (a day, or a month), named by the period
   (`2026-11-26`, `2026-11`): tokens, and cost in nano-dollars. An admission is refused while the
   period's spending has reached the budget (tokens or dollars). Spending is added when a request
   settles: a request admitted before the budget ran out always finishes.
C4 Refusals, in this order: budget (its wait is the period's end, which the caller knows), busy (wait:
   inf, only a release frees a slot), then the buckets in the order given (requests before tokens, the
   client's before the model's). The reason is the first that refuses; the wait is the longest of every
   bucket that refuses, `(min(amount, capacity) - level) / rate`, so a retry after it finds room in all.
   A refusal takes nothing, and reports every bucket's level as it stands.
C5 Settling frees the slot, gives each token bucket `reserved - used` back (capped at its capacity;
   more used than reserved lowers it; used unknown keeps the reservation), adds the spending to the
   period the request was admitted in, and adds the usage counts (requests, errors, prompt, cached and
   completion tokens, cost) to the model's row. A client keeps at most MAX_LABELS rows: a model that
   would need another one is counted under "other".
C6 What a client is told (the x-ratelimit-* headers): for requests and for tokens, the bucket with the
   least left after its admission (or as it stands, when refused): its capacity, what is left
   (`max(0, floor(level))`) and the time until it is full again (`(capacity - level) / rate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Optional

# Why an admission was refused (also the limit a client's 429 names).
OK, BUDGET, BUSY, REQUESTS, TOKENS, MODEL_REQUESTS, MODEL_TOKENS = (
    "ok", "budget", "busy", "requests", "tokens", "model_requests", "model_tokens")
REQUEST_KINDS = frozenset((REQUESTS, MODEL_REQUESTS))


@dataclass(frozen=True, slots=True)
class BucketRule:
    """One bucket an admission takes from: where it is kept, what a refusal by it is called, its refill per
    second and its capacity."""

    field: str  # "r", "t", "m:<model>:r", "m:<model>:t"
    reason: str
    rate: float
    capacity: float


@dataclass(frozen=True, slots=True)
class Left:
    """C6: one bucket as its x-ratelimit-* headers tell it."""

    limit: float
    remaining: int
    reset: float  # seconds until full


def left_of(rules: tuple[BucketRule, ...], levels: tuple[Optional[float], ...], requests: bool) -> Optional[Left]:
    """C6: the requests (or tokens) bucket with the least left, from the levels after an admission."""
    found: Optional[Left] = None
    for rule, level in zip(rules, levels, strict=True):
        if level is None or (rule.reason in REQUEST_KINDS) != requests:
            continue
        remaining = max(0, math.floor(level))
        if found is None or remaining < found.remaining:
            found = Left(rule.capacity, remaining, max(0.0, rule.capacity - level) / rule.rate if rule.rate else 0.0)
    return found


def period_of(kind: str, wall: float) -> tuple[str, float]:
    """C3: the UTC calendar period (`day` or `month`) that holds `wall` (Unix seconds): its name and its end."""
    moment = datetime.fromtimestamp(wall, UTC)
    if kind == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        name = start.strftime("%Y-%m-%d")
        end = start.timestamp() + 86400
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        name = start.strftime("%Y-%m")
        following = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
            month=start.month + 1)
        end = following.timestamp()
    return name, end


def replaces(period: str, held: str) -> bool:
    """C3: whether the budget period in force now, `period`, replaces the one a client's spending is held
    for: a later period of the same kind, or a period of the other kind (a reload changed the budget's
    period; its spending starts from zero, as it does in Redis, whose spending is kept per period name).
    Names of one kind sort in time order; a day's and a month's do not sort against each other."""
    return period != held and (len(period) != len(held) or period > held)


def follows(period: str, held: str) -> bool:
    """C3: whether spending settled for `period` (the one its request was admitted in) opens a new period
    after `held`. One of the other kind, from before a reload changed the budget's period, does not."""
    return not held or (len(period) == len(held) and period > held)


def over_budget(spent_tokens: int, spent_nano: int, tokens: Optional[int], nano: Optional[int]) -> bool:
    """C3: whether a period's spending has reached the budget."""
    return (tokens is not None and spent_tokens >= tokens) or (nano is not None and spent_nano >= nano)
