"""A client's own rate-limit headers, in OpenAI's format (rule C6 says which bucket each reports)."""

from __future__ import annotations

import math
from typing import Optional

from .rules import Left


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's notation): 20ms, 1.2s, 6m0s, 1h2m3.5s; to the millisecond."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis < 1000:
        return f"{millis}ms" if millis else "0s"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def _limit(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def rate_limit_headers(requests: Optional[Left], tokens: Optional[Left]) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the buckets that apply."""
    headers = {}
    if requests is not None:
        headers["x-ratelimit-limit-requests"] = _limit(requests.limit)
        headers["x-ratelimit-remaining-requests"] = str(requests.remaining)
        headers["x-ratelimit-reset-requests"] = duration(requests.reset)
    if tokens is not None:
        headers["x-ratelimit-limit-tokens"] = _limit(tokens.limit)
        headers["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
        headers["x-ratelimit-reset-tokens"] = duration(tokens.reset)
    return headers
