"""What each upstream answer means for its controller: success, cooldown, disable, or a breaker failure."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Optional

from ..config.settings import Settings
from ..controllers import Controller
from ..controllers.rate_headers import RateHeaders
from ..endpoints.usage import Usage
from ..state import FOREVER
from ..state.store import WHOLE
from .scheduler import Lease, Scheduler

log = logging.getLogger("chatgpt_apiserver.outcomes")

QUOTA_MARKERS = (b"insufficient_quota", b"exceeded your current quota")
# Statuses that say "this controller cannot answer now" (not "this request is wrong"): try another one.
CONTROLLER_FAULTS = frozenset((401, 403, 408, 429))


def controller_fault(status: int) -> bool:
    """Whether an upstream status blames the controller (retry elsewhere) rather than the request."""
    return status >= 500 or status in CONTROLLER_FAULTS


def fault_kind(status: int, body: bytes) -> str:
    """How a controller fault is counted: 429, quota, auth, timeout or 5xx."""
    if status == 429:
        return "quota" if is_quota_error(body) else "429"
    if status in (401, 403):
        return "auth"
    if status == 408:
        return "timeout"
    return "5xx"


def is_quota_error(body: bytes) -> bool:
    """OpenAI's 'out of quota / billing' 429, as opposed to a rate limit."""
    return any(marker in body for marker in QUOTA_MARKERS)


def rate_headers(controller: Controller, status: int, headers: Mapping[str, str]) -> Optional[RateHeaders]:
    """The upstream's x-ratelimit-* and Retry-After headers, read only when something will use them."""
    limits = controller.spec.limits
    if limits.rpm or limits.tpm or status == 429:
        return RateHeaders.parse(headers)
    return None


def record_status(lease: Lease, status: int, rate: Optional[RateHeaders], body: bytes,
                  scheduler: Scheduler, settings: Settings, complete: bool = True) -> None:
    """An answer with a status: success, 429, quota, auth, or a server error.

    The rate-limit headers are kept on the lease and believed when it is released. A stream that has
    only begun (`complete` false) is not a success yet: `record_success` follows when it ends well.
    """
    controller, store = lease.controller, scheduler.store
    if rate is not None:
        lease.rate, lease.rate_at = rate, scheduler.clock()
    if not controller_fault(status):
        if complete:
            record_success(lease, scheduler)  # a client's own mistake says nothing against the upstream
        return
    if status == 429:
        controller.stats.rate_limited += 1
        if is_quota_error(body):
            controller.stats.failures += 1
            store.disable(controller, WHOLE, settings.quota_disable_seconds, "out of quota (insufficient_quota)")
            return
        cooldown = rate.cooldown() if rate is not None else None
        store.rate_limited(controller, cooldown if cooldown is not None else settings.cooldown_default)
        return
    if status in (401, 403):
        controller.stats.failures += 1
        store.disable(controller, WHOLE, FOREVER, f"the upstream rejected the key ({status})")
        return
    record_failure(lease, scheduler)


def record_success(lease: Lease, scheduler: Scheduler) -> None:
    """A whole, usable answer: the breaker closes."""
    lease.controller.stats.successes += 1
    scheduler.store.succeeded(lease.controller, lease.model)


def record_failure(lease: Lease, scheduler: Scheduler, whole: bool = False) -> None:
    """A 5xx, a timeout or a malformed answer (the pair's breaker), or, `whole`, a failure to connect at
    all (refused, DNS, TLS: the controller's breaker)."""
    controller, model = lease.controller, lease.model
    controller.stats.failures += 1
    scheduler.store.failed(controller, model, whole, scheduler.may_eject(controller, model, lease.candidates))


def record_usage(controller: Controller, usage: Optional[Usage], label: str) -> Optional[float]:
    """Count the tokens an answer used; return them for settling the reservation (None: not reported)."""
    if usage is None:
        return None
    controller.stats.tokens(label, usage.prompt, usage.completion)
    return float(usage.tokens)
