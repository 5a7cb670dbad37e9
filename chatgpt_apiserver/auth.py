"""Client and admin keys, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Optional

from .secret import Secret


class KeyRing:
    """A set of keys; `check` compares a presented key against every one of them in constant time."""

    def __init__(self, keys: Iterable[Secret]) -> None:
        self._digests = [hashlib.sha256(key.reveal().encode()).digest() for key in keys if key]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: Optional[str]) -> bool:
        """Whether an `Authorization: Bearer <key>` header carries one of the keys."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return False
        presented = hashlib.sha256(authorization[7:].strip().encode()).digest()
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found
