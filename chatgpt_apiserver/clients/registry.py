"""Who is calling: clients found by the digest of the key they present, and what admitting them involves.

Only digests are held. A presented key is hashed once and looked up in a dict: the lookup takes the same time
for every key of the same length whatever the configured keys are, and a timing difference could at most
reveal something about a digest, which does not help to find a key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Optional

from ..auth import presented_digest
from ..config.clients import ClientSpec, snapshot_of
from ..scheduling.fair_queue import Tenant
from .rules import MODEL_REQUESTS, MODEL_TOKENS, REQUESTS, TOKENS, BucketRule
from .store import Plan


def plan_for(spec: ClientSpec, model: Optional[str] = None) -> Plan:
    """The buckets (C1, in the order of C4), concurrency and budget that admit `spec`'s requests for `model`."""
    buckets = []
    model_limit = spec.model_limits.get(model) if model is not None else None
    if spec.limits.rpm:
        buckets.append(BucketRule("r", REQUESTS, spec.limits.rpm / 60, spec.limits.rpm))
    if model_limit is not None and model_limit.rpm:
        buckets.append(BucketRule(f"m:{model}:r", MODEL_REQUESTS, model_limit.rpm / 60, model_limit.rpm))
    if spec.limits.tpm:
        buckets.append(BucketRule("t", TOKENS, spec.limits.tpm / 60, spec.limits.tpm))
    if model_limit is not None and model_limit.tpm:
        buckets.append(BucketRule(f"m:{model}:t", MODEL_TOKENS, model_limit.tpm / 60, model_limit.tpm))
    budget = spec.budget
    return Plan(spec.name, tuple(buckets), spec.max_concurrency or 0, budget.period if budget else "",
                budget.tokens if budget else None,
                round(budget.usd * 1e9) if budget is not None and budget.usd is not None else None)


class Client:
    """One configured client as the gateway uses it: its spec, queue place and admission plans."""

    __slots__ = ("name", "plain", "plans", "spec", "tenant", "view_plan")

    def __init__(self, spec: ClientSpec, max_waiting: Optional[int]) -> None:
        self.spec = spec
        self.name = spec.name
        self.tenant = Tenant(spec.name, spec.priority == "batch", spec.share, max_waiting)
        self.plans = {model: plan_for(spec, model) for model in spec.model_limits}
        self.plans[""] = plan_for(spec)
        # Admitting it checks nothing (no allow-list, no limit of any kind): its requests are only counted.
        self.plain = spec.models is None and len(self.plans) == 1 and not self.plans[""].limited
        buckets = {rule.field: rule for plan in self.plans.values() for rule in plan.buckets}
        self.view_plan = Plan(spec.name, tuple(buckets.values()))  # every bucket, for the admin view

    def plan(self, model: str) -> Plan:
        """The plan for a request for `model`."""
        found = self.plans.get(model)
        return found if found is not None else self.plans[self._snapshot_limited(model)]

    def limited_as(self, model: str) -> str:
        """The name of `model` in the client's `model_limits` (its own, or that of the model it is a dated
        snapshot of), or "" if it has no limits of its own."""
        return model if model in self.plans else self._snapshot_limited(model)

    def _snapshot_limited(self, model: str) -> str:
        """The model `model` is a dated snapshot of, if it has limits here; else ""."""
        if len(self.plans) == 1:
            return ""  # no model_limits
        base = snapshot_of(model)
        return base if base is not None and base in self.plans else ""


FOUND_KEPT = 4096  # `Authorization` headers remembered with their client


class Registry:
    """The configured clients, by key digest and by name."""

    def __init__(self, clients: Iterable[Client] = ()) -> None:
        self.by_name = {client.name: client for client in clients}
        self._by_digest = {client.spec.digest: client for client in self.by_name.values()}
        # An `Authorization` header already found -> its client: one lookup instead of a SHA-256 and three calls
        # per request. Only headers of configured clients get in; emptied when full; a reload builds a new
        # registry, so a removed key is never found here.
        self._found: dict[str, Client] = {}

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)

    def find(self, authorization: Optional[str]) -> Optional[Client]:
        """The client whose key an `Authorization: Bearer <key>` header carries, if any."""
        if authorization is None:
            return None
        client = self._found.get(authorization)
        if client is not None:
            return client
        presented = presented_digest(authorization)
        client = self._by_digest.get(presented) if presented is not None else None
        if client is not None:
            if len(self._found) >= FOUND_KEPT:
                self._found.clear()
            self._found[authorization] = client
        return client


def queue_bound(max_queue_size: int, share: float, clients: int) -> Optional[int]:
    """How many requests one client may have waiting: a share of the queue when several clients use it."""
    return max(1, math.ceil(max_queue_size * share)) if clients > 1 and share < 1 else None
