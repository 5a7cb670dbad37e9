"""Undoing gzip and deflate, in bounded pieces: a small answer that inflates to gigabytes is read a piece at a
time, and the reader stops when it passes its limit, so no allocation grows with the inflated size."""

from __future__ import annotations

import zlib
from typing import Optional

from .reply import UpstreamError

PIECE = 256 * 1024  # most bytes one step of decoding produces
_GZIP_MAGIC = b"\x1f\x8b"


def _codings(header: str) -> list[str]:
    return [part.strip().lower() for part in header.split(",") if part.strip()]


def decoder_for(transfer_encoding: Optional[str], content_encoding: Optional[str]) -> Optional[Decoder]:
    """The decoder for an answer's codings, or None when its body is sent as is.

    `Transfer-Encoding: gzip, chunked` was gzipped, then chunked: llhttp undoes the chunking, this the gzip,
    then the content codings, each list undone last to first.
    """
    if not content_encoding and (not transfer_encoding or transfer_encoding == "chunked"):
        return None  # the usual answer: nothing to undo
    codings = [c for c in reversed(_codings(transfer_encoding or "")) if c != "chunked"]
    codings += reversed(_codings(content_encoding or ""))
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    for coding in codings:
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise UpstreamError("protocol", f"the upstream sent an answer in an unsupported coding ({coding[:40]})")
    return Decoder(codings)


class _Stage:
    """One coding being undone: a zlib stream, and the input it has not consumed yet."""

    __slots__ = ("coding", "more", "pending", "probing", "zlib")

    def __init__(self, coding: str) -> None:
        self.coding = coding
        gzip = coding != "deflate"
        self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
        self.pending = b""
        self.more = False  # the last step filled a whole piece: zlib may hold more output
        self.probing = not gzip  # deflate is zlib-wrapped by the standard, raw from some servers

    def step(self) -> bytes:
        """Decode at most PIECE bytes of what is pending."""
        data, self.pending = self.pending, b""
        if self.zlib.eof:
            if data[:2] != _GZIP_MAGIC or self.coding == "deflate":
                return b""  # bytes after the end of the stream carry nothing: dropped
            self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member follows
        try:
            out = self.zlib.decompress(data, PIECE)
        except zlib.error:
            if not self.probing:
                raise UpstreamError("protocol", f"the upstream sent a corrupt {self.coding} body") from None
            self.probing = False
            self.zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            self.pending = data
            return self.step()
        if out:
            self.probing = False
        self.more = len(out) == PIECE
        self.pending = self.zlib.unused_data if self.zlib.eof else self.zlib.unconsumed_tail
        return out

    @property
    def ended(self) -> bool:
        """The coded stream reached its end."""
        return bool(self.zlib.eof)


class Decoder:
    """A chain of codings undone in bounded pieces: feed raw bytes, pull decoded ones."""

    __slots__ = ("_input", "_stages")

    def __init__(self, codings: list[str]) -> None:
        self._stages = [_Stage(coding) for coding in codings]
        self._input: list[bytes] = []

    def feed(self, data: bytes) -> None:
        """Add raw body bytes."""
        self._input.append(data)

    def pull(self) -> bytes:
        """Up to PIECE decoded bytes; b"" when everything fed so far is decoded."""
        return self._pull(len(self._stages) - 1)

    def _pull(self, index: int) -> bytes:
        stage = self._stages[index]
        while True:
            if stage.pending or stage.more:
                out = stage.step()
                if out:
                    return out
                if stage.pending:
                    continue  # more of it, a new gzip member, or a deflate stream found to be raw
            data = self._pull(index - 1) if index else self._raw()
            if not data:
                return b""
            stage.pending = data

    def _raw(self) -> bytes:
        return self._input.pop(0) if self._input else b""

    def finish(self) -> None:
        """The raw body ended: raise if a coded stream stopped short of its end."""
        for stage in self._stages:
            if not stage.ended:
                raise UpstreamError("protocol", f"the upstream's {stage.coding} body ended before its end")
