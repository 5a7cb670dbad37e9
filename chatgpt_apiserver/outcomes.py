"""What each upstream answer means for its controller: settle, cool down, disable or count a failure."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

import orjson

from .config import Settings
from .controllers import Controller
from .health import FOREVER
from .limits import RateHeaders
from .scheduler import Scheduler

log = logging.getLogger("chatgpt_apiserver.outcomes")

QUOTA_MARKERS = (b"insufficient_quota", b"exceeded your current quota")


def is_quota_error(body: bytes) -> bool:
    """OpenAI's 'out of quota / billing' 429, as opposed to a rate limit."""
    return any(marker in body for marker in QUOTA_MARKERS)


def correct_limits(controller: Controller, headers: Mapping[str, str], now: float) -> Optional[RateHeaders]:
    """Adjust the controller's buckets to the upstream's x-ratelimit-* headers (only if it has buckets)."""
    state = controller.state
    if state.requests is None and state.tokens is None:
        return None
    parsed = RateHeaders.parse(headers)
    state.correct(parsed, now)
    return parsed


def record_status(controller: Controller, status: int, headers: Mapping[str, str], body: bytes,
                  scheduler: Scheduler, settings: Settings, now: float) -> None:
    """An answer with a status: success, 429, quota, auth, or a server error."""
    state = controller.state
    parsed = correct_limits(controller, headers, now)
    if status < 400 or (status < 500 and status not in (401, 403, 408, 429)):
        state.succeeded(now)  # the upstream works; a client's own mistake says nothing against it
        return
    if status == 429:
        if is_quota_error(body):
            state.disable("out of quota (insufficient_quota)", settings.quota_disable_seconds, now)
            return
        parsed = parsed or RateHeaders.parse(headers)
        cooldown = parsed.cooldown()
        state.rate_limited(cooldown if cooldown is not None else settings.cooldown_default, now)
        return
    if status in (401, 403):
        state.disable(f"the upstream rejected the key ({status})", FOREVER, now)
        return
    record_failure(controller, scheduler, now)


def record_failure(controller: Controller, scheduler: Scheduler, now: float) -> None:
    """A 5xx, a connection error, a timeout or a malformed answer."""
    controller.state.failed(scheduler.others_usable(controller), now)


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


def parse_body(body: bytes) -> Any:
    """The JSON document of a body, or raise ValueError."""
    return orjson.loads(body)
