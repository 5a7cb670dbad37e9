"""Which controller holds a stored response or a conversation: follow-ups must go where their state is.

A response (`resp_...`) or a conversation (`conv_...`) lives in the OpenAI project of the key that made it;
anywhere else a follow-up gets 404. The gateway learns the owner of every such id it sees created and
sends the requests that name it to that owner.

In memory the map is bounded by `affinity_max_entries`: two generations of a plain dict keyed by a
60-bit digest of the id (an int: ~89 bytes an entry, measured by `scripts/bench` figure (k)); when the
young one is half full it becomes the old one and the old one is dropped, so the least recently used go
first. With Redis the map is shared by every instance and survives restarts (`P:aff:<id>`, expiring
after `affinity_ttl`), with the memory map in front of it as a cache: an id's owner never changes.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Optional

from .store import StoreUnavailable

if TYPE_CHECKING:
    from .redis_link import RedisLink

log = logging.getLogger("chatgpt_apiserver.state")
CHARGED = "#charged"  # an id with this suffix: the stored response's usage has been charged to its client
MAKER = "#client"  # an id with this suffix: the client that made it (its owner is that client's name)


def digest(key: str) -> int:
    """A 60-bit digest of an id (small ints cost less memory than strings; collisions are negligible)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 4


class LocalAffinity:
    """The owner of each id, in memory, bounded, least recently used first out."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(2, max_entries)
        self._young: dict[int, str] = {}
        self._old: dict[int, str] = {}
        self._names: dict[str, str] = {}  # one shared string per owner

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def owner(self, key: str) -> Optional[str]:
        """The controller that holds `key`, if known."""
        found_key = digest(key)
        found = self._young.get(found_key)
        if found is None:
            found = self._old.pop(found_key, None)
            if found is not None:
                self._put(found_key, found)
        return found

    def remember(self, key: str, owner: str) -> None:
        """`owner` holds `key`."""
        self._put(digest(key), self._names.setdefault(owner, owner))

    def forget(self, key: str) -> None:
        """`key` was deleted."""
        found_key = digest(key)
        self._young.pop(found_key, None)
        self._old.pop(found_key, None)

    def _put(self, key: int, owner: str) -> None:
        young = self._young
        young[key] = owner
        if len(young) >= self.max_entries // 2:
            self._old, self._young = young, {}

    def resize(self, max_entries: int) -> None:
        """A reload changed the bound: the older generation goes if the map no longer fits."""
        self.max_entries = max(2, max_entries)
        if len(self) > self.max_entries:
            self._old = {}


class Affinity:
    """The owner map: in memory, and with Redis shared by every instance and every restart."""

    def __init__(self, max_entries: int, ttl: float, link: Optional[RedisLink] = None) -> None:
        self.local = LocalAffinity(max_entries)
        self.ttl = ttl
        self.link = link

    def configure(self, max_entries: int, ttl: float) -> None:
        """A reload: new bounds."""
        self.local.resize(max_entries)
        self.ttl = ttl

    async def owner(self, key: str) -> Optional[str]:
        """The controller that holds `key`, if any instance learned it (Redis away: this one's memory)."""
        found = self.local.owner(key)
        if found is not None or self.link is None or not self.link.available:
            return found
        try:
            reply = await self.link.call("aff_get", (self._key(key),), ())
        except StoreUnavailable:
            return None
        if reply is None:
            return None
        owner = reply.decode() if isinstance(reply, bytes) else str(reply)
        self.local.remember(key, owner)
        return owner

    def remember(self, key: str, owner: str) -> None:
        """`owner` holds `key` (and so does every instance, with Redis)."""
        if self.local.owner(key) == owner:
            return
        self.local.remember(key, owner)
        if self.link is not None:
            self.link.send("aff_set", (self._key(key),), (owner, b"%d" % max(1, round(self.ttl))))

    async def first_charge(self, key: str) -> bool:
        """Whether the usage of the stored response `key` is charged now for the first time (a fetch of a
        background response that has ended); remembered, as its owner is, so that it is charged once."""
        mark = key + CHARGED
        if await self.owner(mark) is not None:
            return False
        self.remember(mark, CHARGED)
        return True

    async def maker(self, key: str) -> Optional[str]:
        """The client that made the stored response or conversation `key`, if a client made it here."""
        return await self.owner(key + MAKER)

    def made_by(self, key: str, client: str) -> None:
        """The client `client` made `key`: other clients may not see it."""
        self.remember(key + MAKER, client)

    def charged(self, key: str) -> None:
        """The usage of the stored response `key` was charged when it was made."""
        self.remember(key + CHARGED, CHARGED)

    def forget(self, key: str) -> None:
        """`key` was deleted upstream."""
        self.local.forget(key)
        if self.link is not None:
            self.link.send("aff_del", (self._key(key),), ())

    def _key(self, key: str) -> bytes:
        assert self.link is not None
        return f"{self.link.prefix}:aff:{key}".encode()
