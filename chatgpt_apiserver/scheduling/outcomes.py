"""What each upstream answer means for its controller: success, cooldown, disable, or a breaker failure.

Whether an error answer blames the request, the controller, or the controller's copy of one model is the
controller's call (`Controller.classify`); what follows from each verdict is decided here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Optional

import orjson

from ..config.settings import Settings
from ..controllers import Controller, Verdict
from ..controllers.rate_headers import RateHeaders
from ..endpoints.usage import Usage
from ..state import FOREVER
from ..state.store import WHOLE
from .scheduler import Lease, Scheduler

log = logging.getLogger("chatgpt_apiserver.outcomes")

QUOTA_MARKERS = (b"insufficient_quota", b"exceeded your current quota")
# A credential renewed from outside (a token file) may be good again soon: a rejected one is retried after this.
RENEWED_KEY_RECHECK = 30.0
_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def verdict_of(controller: Controller, status: int, body: bytes) -> Verdict:
    """What an answer says about `controller`: a success or the client's mistake, a fault, or a missing model."""
    return Verdict.ANSWER if status < 400 else controller.classify(status, body)


def fault_kind(status: int, body: bytes, verdict: Verdict = Verdict.FAULT) -> str:
    """How a controller fault is counted: 429, quota, auth, timeout, no_model or 5xx."""
    if verdict is Verdict.NO_MODEL:
        return "no_model"
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


def error_code(body: bytes) -> str:
    """The `error.code` of an upstream's error JSON, when it is a short plain word (for logs), else ""."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and _CODE.fullmatch(code) else ""


def record_status(lease: Lease, status: int, rate: Optional[RateHeaders], body: bytes,
                  scheduler: Scheduler, settings: Settings, complete: bool = True) -> Verdict:
    """An answer with a status: success (or the client's mistake), 429, quota, auth, a missing model, or a
    server error. Returns the verdict, so the caller knows whether to relay it or try another controller.

    The rate-limit headers are kept on the lease and believed when it is released. A stream that has
    only begun (`complete` false) is not a success yet: `record_success` follows when it ends well.
    """
    controller, store = lease.controller, scheduler.store
    if rate is not None:
        lease.rate, lease.rate_at = rate, scheduler.clock()
    verdict = verdict_of(controller, status, body)
    if verdict is Verdict.ANSWER:
        if complete:
            record_success(lease, scheduler)  # a client's own mistake says nothing against the upstream
        return verdict
    if verdict is Verdict.NO_MODEL:
        # Only a config change brings a deployment back: off for this model until a reload (logged once).
        controller.stats.failures += 1
        code = error_code(body)
        store.disable(controller, lease.model, FOREVER,
                      f"the upstream does not serve it ({status}{' ' + code if code else ''})")
        return verdict
    if status == 429:
        controller.stats.rate_limited += 1
        if is_quota_error(body):
            controller.stats.failures += 1
            store.disable(controller, WHOLE, settings.quota_disable_seconds, "out of quota (insufficient_quota)")
            return verdict
        cooldown = rate.cooldown() if rate is not None else None
        store.rate_limited(controller, cooldown if cooldown is not None else settings.cooldown_default)
        return verdict
    if status in (401, 403):
        controller.stats.failures += 1
        if controller.key_renews:
            store.disable(controller, WHOLE, RENEWED_KEY_RECHECK,
                          f"the upstream rejected the token ({status}); its file is read again after that")
        else:
            store.disable(controller, WHOLE, FOREVER, f"the upstream rejected the key ({status})")
        return verdict
    record_failure(lease, scheduler)
    return verdict


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
