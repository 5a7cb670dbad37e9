"""What a client is charged for a request whose answer never said what it used (rule C5's `used` unknown).

A stream the client left, one that broke, or one from an upstream that sends no usage event (a controller
with `stream_usage` false) would otherwise cost its client nothing: a client could dodge its budget by
hanging up before the final usage event. Such a request is charged an estimate instead.
"""

from __future__ import annotations

from typing import Optional

from ..endpoints.usage import Usage


def unreported_usage(reserved: float, body_size: int, events: Optional[int]) -> Usage:
    """The estimate: the prompt as a quarter of the body (at most the reservation), plus a completion token
    per stream event relayed (`events`), or, when no answer came back at all (None), the rest of the
    reservation: the upstream may have written the whole answer."""
    prompt = int(min(max(0.0, reserved), body_size / 4))
    completion = events if events is not None else max(0, round(reserved) - prompt)
    return Usage(prompt, completion)
