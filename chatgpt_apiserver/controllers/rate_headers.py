"""The upstream's own rate-limit headers: x-ratelimit-*, Retry-After, and Azure's millisecond retry headers."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Optional

Clock = Callable[[], float]

# Azure's 429s say how long to wait in milliseconds too: finer than Retry-After's whole seconds, so they win.
RETRY_AFTER_MS = ("retry-after-ms", "x-ms-retry-after-ms")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: Optional[str]) -> Optional[float]:
    """OpenAI's reset format: '6m0s', '1.5s', '20ms', '1h2m3s', or plain seconds ('12')."""
    if not text:
        return None
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None  # "inf" would cool a controller forever
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    return total if position == len(text) and position > 0 else None


def parse_retry_after(text: Optional[str], wall_clock: Clock = time.time) -> Optional[float]:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    if not text:
        return None
    seconds = parse_duration(text)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - wall_clock())


def parse_retry_after_ms(headers: Mapping[str, str]) -> Optional[float]:
    """Seconds from `retry-after-ms` or `x-ms-retry-after-ms` (a number of milliseconds), if either is valid."""
    for name in RETRY_AFTER_MS:
        value = headers.get(name)
        if value is None:
            continue
        try:
            millis = float(value.strip())
        except ValueError:
            continue
        if math.isfinite(millis) and millis >= 0:
            return millis / 1000
    return None


def _number(headers: Mapping[str, str], name: str) -> Optional[float]:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    millis = parse_retry_after_ms(headers)
    return millis if millis is not None else parse_retry_after(headers.get("retry-after"))


@dataclass(frozen=True)
class RateHeaders:
    """What an upstream said about its limits in `x-ratelimit-*`, `Retry-After` and `retry-after-ms`."""

    limit_requests: Optional[float] = None
    remaining_requests: Optional[float] = None
    reset_requests: Optional[float] = None
    limit_tokens: Optional[float] = None
    remaining_tokens: Optional[float] = None
    reset_tokens: Optional[float] = None
    retry_after: Optional[float] = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders:
        """Read the headers (case-insensitively, as any HTTP header mapping gives them)."""
        return cls(
            limit_requests=_number(headers, "x-ratelimit-limit-requests"),
            remaining_requests=_number(headers, "x-ratelimit-remaining-requests"),
            reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
            limit_tokens=_number(headers, "x-ratelimit-limit-tokens"),
            remaining_tokens=_number(headers, "x-ratelimit-remaining-tokens"),
            reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
            retry_after=_retry_after(headers),
        )

    def cooldown(self) -> Optional[float]:
        """After a 429: seconds until the upstream says it is free again."""
        if self.retry_after is not None:
            return self.retry_after
        waits = []
        if self.remaining_requests is not None and self.remaining_requests < 1 and self.reset_requests is not None:
            waits.append(self.reset_requests)
        if self.remaining_tokens is not None and self.remaining_tokens < 1 and self.reset_tokens is not None:
            waits.append(self.reset_tokens)
        if waits:
            return max(waits)
        known = [w for w in (self.reset_requests, self.reset_tokens) if w is not None]
        return min(known) if known else None
