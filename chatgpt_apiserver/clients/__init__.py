"""Clients as tenants: keys by digest, their own limits, budgets and fair share, and usage accounting.

`service.py` is what the gateway uses; `rules.py` the rules of client state, run by `local.py` (in this
process, kept on disk by `state_file.py`) or `redis.py` (shared by every instance, behind `fallback.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..state import ControllerStore
from ..state.fallback import FallbackStore
from .fallback import FallbackClientStore
from .local import LocalClientStore
from .redis import RedisClientStore
from .registry import Client
from .service import Clients
from .state_file import StateFile
from .store import ClientStore

if TYPE_CHECKING:
    from ..config.settings import Settings

__all__ = ["Client", "Clients", "make_clients"]


def make_clients(settings: Settings, controllers: ControllerStore, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> Clients:
    """The clients of `settings`, with their state in Redis when the controllers' is (sharing its link), else
    in this process, kept in `state_dir` when one is set."""
    store: ClientStore
    state_file: Optional[StateFile] = None
    if isinstance(controllers, FallbackStore):
        store = FallbackClientStore(RedisClientStore(controllers.redis.link, wall), LocalClientStore(clock),
                                    settings.redis_fallback)
    else:
        local = LocalClientStore(clock)
        store = local
        if settings.state_dir:
            state_file = StateFile(Path(settings.state_dir), local, wall)
    return Clients(settings, store, state_file, wall)


def apply_settings(clients: Clients, settings: Settings) -> None:
    """A reload: the clients, and the outage rule for their Redis state."""
    clients.configure(settings)
    if isinstance(clients.store, FallbackClientStore):
        clients.store.mode = settings.redis_fallback
