"""The client-state store: one interface, with local, Redis and fallback implementations side by side.

A store holds, per client: its buckets (C1), its slots in flight (C2), the spending of the current budget
period (C3) and its usage per model (C5), by the rules of `rules.py`. `local.py` keeps them in this process
(and `state_file.py` on disk), `redis.py` in Redis for every instance, `fallback.py` applies the outage rule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Optional

from .rules import OK, REQUEST_KINDS, BucketRule

# A usage row: requests, errors, prompt tokens, cached prompt tokens, completion tokens, cost in nano-dollars.
USAGE_FIELDS = ("requests", "errors", "prompt", "cached", "completion", "nano")
MAX_LABELS = 64  # usage rows kept per client: the models it uses, then "other"
OTHER = "other"


@dataclass(frozen=True, slots=True)
class Plan:
    """What admitting one client's request for one model involves (built once per client and model)."""

    name: str
    buckets: tuple[BucketRule, ...] = ()
    max_concurrency: int = 0  # 0: unlimited
    period: str = ""  # "day" or "month"; "" : no budget
    budget_tokens: Optional[int] = None
    budget_nano: Optional[int] = None
    # Whether admitting involves any check (buckets, concurrency or a budget), not only counting.
    limited: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limited", bool(self.buckets or self.max_concurrency or self.period))

    def amounts(self, tokens: float) -> tuple[float, ...]:
        """C1: what an admission of `tokens` takes from each bucket."""
        return tuple(1.0 if rule.reason in REQUEST_KINDS else tokens for rule in self.buckets)


@dataclass(frozen=True, slots=True)
class Period:
    """The budget period an admission falls in: its name and when it ends (Unix seconds)."""

    name: str
    end: float


NO_PERIOD = Period("", 0.0)


@dataclass(slots=True)
class ClientAdmission:
    """The answer to "may this client make this request now?" (C4), with the levels after it (C6)."""

    ok: bool
    reason: str = OK
    wait: float = 0.0
    levels: tuple[Optional[float], ...] = ()
    spent: tuple[int, int] = (0, 0)  # the period's tokens and nano-dollars, as the store saw them
    store: Optional[ClientStore] = None  # the store that admitted it, when a fallback store chose one


# Shared by the local store's admissions of clients without limits: never changed (a store that names
# itself in an admission makes one of its own).
ADMITTED = ClientAdmission(True)


@dataclass(slots=True)
class Charge:
    """What a finished request adds to its client's state (C5)."""

    label: str  # the model, its route for calls that name none, or "other"
    used: Optional[float] = None  # tokens to settle the reservation against (None: unknown, keep it)
    tokens: int = 0  # what the budget counts: the answer's total
    row: tuple[int, int, int, int, int, int] = (1, 0, 0, 0, 0, 0)  # the usage row it adds (USAGE_FIELDS)

    @classmethod
    def of(cls, label: str, used: Optional[float] = None, tokens: int = 0, prompt: int = 0, cached: int = 0,
           completion: int = 0, nano: int = 0, requests: int = 1, errors: int = 0) -> Charge:
        """A charge from its usage row's fields by name."""
        return cls(label, used, tokens, (requests, errors, prompt, cached, completion, nano))

    @property
    def nano(self) -> int:
        """Its cost in nano-dollars."""
        return self.row[5]


def add_row(rows: dict[str, list[int]], label: str, row: Sequence[int]) -> None:
    """Add a usage row under `label` (rule C5: past MAX_LABELS labels, under "other")."""
    counts = rows.get(label)
    if counts is None:
        if len(rows) >= MAX_LABELS - (OTHER not in rows):
            label = OTHER
        counts = rows.setdefault(label, [0, 0, 0, 0, 0, 0])
    counts[0] += row[0]  # (unrolled: a third of the instructions of a map over the six)
    counts[1] += row[1]
    counts[2] += row[2]
    counts[3] += row[3]
    counts[4] += row[4]
    counts[5] += row[5]


NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class ClientTicket:
    """An admitted request of a client: what its settlement needs, and the headers its answer carries."""

    plan: Plan
    reserved: float
    period: Period
    store: Optional[ClientStore] = None
    label: str = ""  # the usage row it counts in
    headers: Optional[Mapping[str, str]] = None  # x-ratelimit-* (rule C6), for a client with limits
    settled: bool = False


@dataclass
class ClientView:
    """What the store holds for one client (the admin view and the status page)."""

    in_flight: int = 0
    levels: dict[str, float] = field(default_factory=dict)  # bucket field -> level now
    period: str = ""
    spent_tokens: int = 0
    spent_nano: int = 0
    usage: dict[str, list[int]] = field(default_factory=dict)  # label -> USAGE_FIELDS


class ClientStore(ABC):
    """Per-client state, behind one interface (see the module docstring)."""

    @abstractmethod
    def configure(self, plans: Sequence[Plan]) -> None:
        """Take the clients now configured (one plan each, without model limits): drop the removed ones that hold
        nothing, rebuild the buckets whose limits changed keeping their fill."""

    async def start(self) -> None:
        """Start background work."""

    async def close(self) -> None:
        """Stop background work."""

    @abstractmethod
    async def admit(self, plan: Plan, tokens: float, period: Period) -> ClientAdmission:
        """C1-C4, atomically: take a slot and each bucket's amount, or refuse with the reason and wait."""

    decides_now = False  # whether the store offers `admit_now` (it never waits on I/O)

    def admit_now(self, plan: Plan, tokens: float, period: Period) -> ClientAdmission:
        """`admit` without a coroutine; only a store that `decides_now` has it."""
        raise NotImplementedError(f"{type(self).__name__} admits through `admit`")

    @abstractmethod
    def settle(self, ticket: ClientTicket, charge: Charge) -> None:
        """C5: end an admitted request."""

    @abstractmethod
    def held(self, name: str) -> int:
        """Requests of client `name` in flight that this process admitted."""

    def counted_here(self) -> Optional[Mapping[str, Mapping[str, list[int]]]]:
        """The usage rows per client, if the store's own rows are what this process counted (a store in this
        process); None if they are not (with Redis: every instance's), and the service tallies its own."""
        return None

    @abstractmethod
    async def views(self, plans: Sequence[Plan], period: dict[str, Period]) -> dict[str, ClientView]:
        """Every client's state, from the store itself (with Redis: every instance's); `period` names each
        client's current budget period."""
