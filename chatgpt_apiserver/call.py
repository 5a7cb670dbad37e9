"""A client's call on its way through the gateway: the original bytes plus what routing needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Call:
    """One client request on its way upstream: the original bytes plus what routing needs."""

    body: bytes
    payload: dict[str, Any]
    model: str
    stream: bool
    request_id: str
    # The client did not ask for the final usage event; the gateway asks upstream and strips it.
    inject_usage: bool = False
