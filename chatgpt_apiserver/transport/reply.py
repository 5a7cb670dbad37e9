"""What every upstream exchange gives the relay: a reply whose headers are in, and its failures."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

Piece = bytes | bytearray  # a piece of a body; a large one is read straight into a bytearray, never copied


def joined(pieces: list[Piece]) -> bytes:
    """The pieces as one `bytes`; copied only when they must be."""
    if len(pieces) == 1 and isinstance(pieces[0], bytes):
        return pieces[0]
    return b"".join(pieces)


class UpstreamError(Exception):
    """An attempt that failed before a usable reply: `kind` is connection, timeout or protocol.

    `connecting`: it failed while connecting (refused, DNS, TLS, connect timeout), so the whole
    controller is unreachable, not just one model on it.
    """

    def __init__(self, kind: str, message: str, *, connecting: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.connecting = connecting


class Reply(ABC):
    """An upstream answer whose headers have arrived; the body is read on demand."""

    status: int
    headers: Mapping[str, str]  # looked up by lower-case names only

    @property
    def content_type(self) -> str:
        """The upstream's Content-Type, or JSON when it gave none."""
        return self.headers.get("content-type", "application/json")

    async def read_pieces(self) -> list[Piece]:
        """The whole body, as the pieces it came in (a large one need not be copied into one)."""
        return [await self.read()]

    @abstractmethod
    async def read(self) -> bytes:
        """The whole body. Raises `UpstreamError` if the upstream fails while sending it."""

    @abstractmethod
    async def read_chunk(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end. Raises `UpstreamError`."""

    @abstractmethod
    def close(self) -> None:
        """Stop reading; an unfinished upstream connection is closed, not reused."""

    def end(self) -> None:
        """Stop reading an answer that is over for the reader (an SSE stream's [DONE]) though its last bytes may
        still be on their way; a transport may wait a moment for them to keep the connection."""
        self.close()
