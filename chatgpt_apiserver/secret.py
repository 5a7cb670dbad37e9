"""A string type for API keys that cannot be printed by accident."""

from __future__ import annotations

import re

# Things that look like OpenAI-style keys (sk-..., sk-proj-...) or bearer tokens in free text.
_KEY_LIKE = re.compile(rb"(sk|rk|pk)-[A-Za-z0-9_\-]{8,}")
# JSON Web Tokens (Entra ID access tokens, renewed behind the gateway's back): base64url header, payload and
# signature; the header always starts with `{"` (eyJ). Even the newest token of a token file is caught.
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


class Secret:
    """An API key: `str()` and `repr()` show a short prefix only; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value, for the one place that must send it upstream."""
        return self._value

    def redacted(self) -> str:
        """A label safe for logs: at most the first three characters, then a mask."""
        if len(self._value) >= 16:
            return self._value[:3] + "…(redacted)"
        return "(redacted)"

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"Secret({self.redacted()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")


def scrub(data: bytes, secrets: tuple[bytes, ...] = ()) -> bytes:
    """Remove key-like strings and the given secret values from bytes headed to a client or log."""
    for value in secrets:
        if value and value in data:
            data = data.replace(value, b"[redacted]")
    if b"k-" in data:
        data = _KEY_LIKE.sub(rb"\1-[redacted]", data)
    if b"eyJ" in data:
        data = _JWT.sub(b"[redacted-token]", data)
    return data


def scrub_text(text: str, secrets: tuple[bytes, ...] = ()) -> str:
    """`scrub` for text."""
    return scrub(text.encode("utf-8", "surrogatepass"), secrets).decode("utf-8", "replace")


def redacted_snippet(data: bytes, secrets: tuple[bytes, ...], limit: int) -> str:
    """The start of `data` as text for a log line: redacted first, then cut, so no secret is cut in two.

    Only a window a little past `limit` is scrubbed: bounded work however large `data` is, and a secret
    that starts inside the first `limit` bytes still lies whole inside the window.
    """
    longest = max((len(value) for value in secrets), default=0)
    window = data[:limit + max(longest, 256)]
    return scrub(window, secrets)[:limit].decode("utf-8", "replace")
