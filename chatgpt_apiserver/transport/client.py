"""The seam between controllers and HTTP: a client sends an `UpstreamRequest` to one upstream and returns a
`Reply`. `Http1Client` (transport/http1.py) is the one in use; another protocol would be a class beside it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from .reply import Reply
from .request import UpstreamRequest


@dataclass(frozen=True)
class Transport:
    """Connection-level limits shared by every upstream controller."""

    connect_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_connections: int = 1000
    keepalive_timeout: float = 30.0
    max_body_size: int = 64 * 1024 * 1024  # a whole answer read at once, after decompression


class Client(ABC):
    """Sends requests to one upstream, over connections it keeps."""

    @abstractmethod
    async def request(self, request: UpstreamRequest) -> Reply:
        """Send `request`; return once the answer's head is in. Raises `UpstreamError`."""

    @abstractmethod
    def close(self) -> None:
        """Close idle connections; busy ones close when their replies do."""
