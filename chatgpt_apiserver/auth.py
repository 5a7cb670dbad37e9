"""Client and admin keys, checked in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Optional

from .config.clients import key_digest
from .secret import Secret


class KeyRing:
    """A set of keys; `check` compares a presented key against every one of them in constant time."""

    def __init__(self, keys: Iterable[Secret]) -> None:
        self._digests = [key_digest(key.reveal()) for key in keys if key]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: Optional[str]) -> bool:
        """Whether an `Authorization: Bearer <key>` header carries one of the keys."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return False
        presented = key_digest(authorization[7:].strip())
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found
