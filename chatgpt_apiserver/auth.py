"""Client and admin keys, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Optional

from .secret import Secret

_SHA256 = hashlib.sha256()  # copied for each key: with OpenSSL 3, half the cost of looking the algorithm up


def key_digest(key: str) -> bytes:
    """The SHA-256 digest a key is known by (what `--hash-key` prints, in hex)."""
    hasher = _SHA256.copy()
    hasher.update(key.encode())
    return hasher.digest()


def presented_digest(authorization: Optional[str]) -> Optional[bytes]:
    """The digest of the key an `Authorization: Bearer <key>` header carries, or None for any other header."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    return key_digest(authorization[7:].strip())


class KeyRing:
    """A set of keys; `check` compares a presented key against every one of them in constant time."""

    def __init__(self, keys: Iterable[Secret]) -> None:
        self._digests = [key_digest(key.reveal()) for key in keys if key]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: Optional[str]) -> bool:
        """Whether an `Authorization: Bearer <key>` header carries one of the keys."""
        presented = presented_digest(authorization)
        if presented is None:
            return False
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found
