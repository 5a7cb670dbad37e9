"""Request bodies on their way in: the bytes they hold across all requests, and who waits for them.

A request is checked when its headers arrive (key, declared size, room in the budget) and only then is its
body read; see `BaseHandler.prepare`. This object is shared by every handler (through the route table) and
by the server's slow-client sweep, which asks the waiting handler to answer 408 when a body is too slow.
"""

from __future__ import annotations

from collections.abc import Callable

from tornado.httputil import HTTPConnection


class Bodies:
    """Body bytes held at once, against a limit read at each request (a reload changes it)."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit
        self.held = 0
        # Requests whose body is still arriving: their connection -> a callback that answers 408 (True if it did).
        self.waiting: dict[HTTPConnection, Callable[[], bool]] = {}

    def take(self, size: int) -> bool:
        """Reserve `size` bytes if they fit under the limit."""
        if self.held + size > self.limit():
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Return bytes taken earlier."""
        self.held -= size

    def timed_out(self, connection: HTTPConnection) -> bool:
        """The body on `connection` came too slowly: let its handler answer; False if none could."""
        answer = self.waiting.pop(connection, None)
        return answer() if answer is not None else False
