"""What each upstream answer means for its controller: settle, cool down, disable or count a failure."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

from ..config.settings import Settings
from ..controllers import Controller
from ..controllers.rate_headers import RateHeaders
from ..state.health import FOREVER
from ..state.redis import SharedState
from .scheduler import Scheduler

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


def record_status(controller: Controller, status: int, rate: Optional[RateHeaders], body: bytes,
                  scheduler: Scheduler, settings: Settings, now: float) -> None:
    """An answer with a status: success, 429, quota, auth, or a server error; `rate` corrects the buckets."""
    state = controller.state
    if rate is not None:
        state.correct(rate, now)
    if not controller_fault(status):
        state.succeeded(now)  # the upstream works; a client's own mistake says nothing against it
        return
    shared = scheduler.shared if scheduler.shared is not None and scheduler.shared.available else None
    if status == 429:
        if is_quota_error(body):
            _disable(controller, "out of quota (insufficient_quota)", settings.quota_disable_seconds, now, shared)
            return
        cooldown = rate.cooldown() if rate is not None else None
        seconds = cooldown if cooldown is not None else settings.cooldown_default
        state.rate_limited(seconds, now)
        if shared is not None:
            shared.cool(controller, seconds)  # every instance stays off it
        return
    if status in (401, 403):
        _disable(controller, f"the upstream rejected the key ({status})", FOREVER, now, shared)
        return
    record_failure(controller, scheduler, now)


def _disable(controller: Controller, reason: str, seconds: float, now: float, shared: Optional[SharedState]) -> None:
    controller.state.disable(reason, seconds, now)
    if shared is not None:
        shared.disable(controller, seconds, reason)


def record_failure(controller: Controller, scheduler: Scheduler, now: float) -> None:
    """A 5xx, a connection error, a timeout or a malformed answer."""
    may_eject = scheduler.others_usable(controller)
    controller.state.failed(may_eject, now)
    if scheduler.shared is not None and scheduler.shared.available:
        scheduler.shared.fail(controller, may_eject)


def usage_of(document: Any) -> Optional[dict[str, Any]]:
    """The `usage` object of a completion or a stream's final event, if it has one."""
    if isinstance(document, dict):
        usage = document.get("usage")
        if isinstance(usage, dict):
            return usage
    return None


def record_usage(controller: Controller, usage: Optional[dict[str, Any]], model: str) -> Optional[float]:
    """Count the tokens an answer used; return the total for settling the reservation."""
    if usage is None:
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    counters = controller.state.counters
    by_model = counters.tokens_by_model.get(model)
    if by_model is None:
        by_model = counters.tokens_by_model[model] = [0, 0]
    if isinstance(prompt, int):
        counters.prompt_tokens += prompt
        by_model[0] += prompt
    if isinstance(completion, int):
        counters.completion_tokens += completion
        by_model[1] += completion
    total = usage.get("total_tokens")
    if isinstance(total, (int, float)):
        return float(total)
    if isinstance(prompt, int) and isinstance(completion, int):
        return float(prompt + completion)
    return None
