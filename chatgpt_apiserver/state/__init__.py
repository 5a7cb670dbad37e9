"""Controller state: buckets, in-flight slots, cooldowns, disables and the breaker, local or in Redis.

`store.py` is the interface, `rules.py` the rules; `local.py`, `redis.py` and `fallback.py` implement it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .affinity import Affinity
from .fallback import FallbackStore
from .local import LocalStore
from .redis import RedisStore
from .redis_link import RedisLink
from .rules import FOREVER, Policy
from .store import ControllerStore, StoreUnavailable, Ticket

if TYPE_CHECKING:
    from ..config.settings import Settings

__all__ = ["FOREVER", "Affinity", "ControllerStore", "LocalStore", "Policy", "StoreUnavailable", "Ticket",
           "apply_settings", "make_affinity", "make_store", "policy_of"]


def policy_of(settings: Settings) -> Policy:
    """The breaker policy the settings ask for."""
    return Policy(settings.breaker_failures, settings.breaker_ejection, settings.breaker_max_ejection)


def make_store(settings: Settings, clock: Callable[[], float] = time.monotonic) -> ControllerStore:
    """The local store, or with `redis_url` the Redis store behind the outage rule."""
    if not settings.redis_url:
        return LocalStore(clock)
    link = RedisLink(settings.redis_url.reveal(), settings.redis_prefix, settings.redis_timeout)
    return FallbackStore(RedisStore(link, clock), LocalStore(clock), settings.redis_fallback)


def apply_settings(store: ControllerStore, settings: Settings) -> None:
    """A reload: the Redis timeout and the outage rule take effect (the URL and prefix need a restart)."""
    if isinstance(store, FallbackStore):
        store.redis.link.timeout = settings.redis_timeout
        store.mode = settings.redis_fallback


def make_affinity(settings: Settings, store: ControllerStore) -> Affinity:
    """The owner map of stored responses and conversations: in Redis too when the store is."""
    link = store.redis.link if isinstance(store, FallbackStore) else None
    return Affinity(settings.affinity_max_entries, settings.affinity_ttl, link)
