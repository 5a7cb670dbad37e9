"""The gateway's live state: controllers, their state store, the scheduler, and the model catalogue."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Optional, Protocol

from .auth import KeyRing
from .clients import Clients, make_clients
from .clients import apply_settings as apply_client_settings
from .clients.metrics import ClientCollector
from .config.settings import Settings
from .controllers import Controller, Transport, build_controller
from .ops.metrics import Metrics
from .scheduling.balancer import make_balancer
from .scheduling.scheduler import QueuePolicy, RetryBudget, Scheduler
from .state import ControllerStore, apply_settings, make_affinity, make_store, policy_of
from .state.store import DISABLED, WHOLE, ControllerView

log = logging.getLogger("chatgpt_apiserver.gateway")

DISCOVERY_TTL = 300.0
DISCOVERY_FAILURE_TTL = 30.0  # a failed discovery is retried after this, not on every request
VIEW_MAX_AGE = 1.0  # metrics may show views this old


def transport_of(settings: Settings) -> Transport:
    """The connection-level limits the settings ask for."""
    return Transport(
        connect_timeout=settings.connect_timeout,
        idle_timeout=settings.stream_idle_timeout,
        max_connections=settings.upstream_max_connections,
        keepalive_timeout=settings.upstream_keepalive_timeout,
        max_body_size=settings.max_upstream_body_size,
    )


def _secrets(controllers: list[Controller]) -> tuple[bytes, ...]:
    """Every key and secret header value, to scrub from what upstreams say."""
    found: list[bytes] = []
    for controller in controllers:
        found.extend(getattr(controller, "secret_values", ()))
    return tuple(found)


class Abortable(Protocol):
    """A request in flight that can be ended early."""

    def abort(self, reason: str) -> None:
        """End the request now, telling the client why."""


class Gateway:
    """Everything a request handler needs to route a call: who serves a model, and in what order."""

    def __init__(self, settings: Settings, controllers: list[Controller],
                 clock: Callable[[], float] = time.monotonic, store: Optional[ControllerStore] = None) -> None:
        self.settings = settings
        self.controllers = controllers
        self.clock = clock
        self.store = store or make_store(settings, clock)
        self.store.configure(controllers, policy_of(settings))
        self.affinity = make_affinity(settings, self.store)
        self.metrics = Metrics(lambda: self.controllers, lambda: self.in_flight,
                               lambda: self.scheduler.queue_length, self.cached_views)
        self.scheduler = Scheduler(controllers, self.store, make_balancer(settings.pool_type, self.store),
                                   QueuePolicy(settings.max_queue_wait, settings.max_queue_size), clock,
                                   self.metrics.queue_wait.observe)
        self.retries = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_per_second, clock)
        self.clients: Clients = make_clients(settings, self.store, clock)
        clients = self.clients
        self.metrics.registry.register(ClientCollector(
            clients.tally, clients.usage_here, lambda: clients.registry.by_name, clients.store.held,
            lambda client: self.scheduler.waiting(client.tenant), clients.budgets))
        self.draining = False
        self.active: set[Abortable] = set()
        self._use_keys(settings)
        self._idle = asyncio.Event()
        self._idle.set()
        self._discovered: dict[str, tuple[float, Optional[list[str]]]] = {}  # name -> (when, models or failed)
        self._discovering: dict[str, asyncio.Future[list[str]]] = {}
        self.secrets = _secrets(controllers)
        self._background: set[asyncio.Task[Any]] = set()
        self._views: dict[str, ControllerView] = {}
        self._views_at = -VIEW_MAX_AGE

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.monotonic) -> Gateway:
        """Build every controller named in `settings`."""
        transport = transport_of(settings)
        controllers = [build_controller(spec, transport) for spec in settings.controllers]
        return cls(settings, controllers, clock)

    def _use_keys(self, settings: Settings) -> None:
        self.admin_keys = KeyRing([settings.admin_key] if settings.admin_key else [])

    @property
    def in_flight(self) -> int:
        """Requests being handled."""
        return len(self.active)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self, settings: Settings) -> None:
        """Swap in a new config: unchanged controllers keep their state, new ones join, removed ones drain.

        Every setting takes effect: the ones read per request through `self.settings`, and those held by
        parts built at start (the store's breaker policy, the balancer, queue bounds, retry budget, client
        keys, each controller's transport limits). server.py applies the server's own and names the ones
        that need a restart.
        """
        old = {controller.name: controller for controller in self.controllers}
        transport = transport_of(settings)
        kept: list[str] = []
        added: list[str] = []
        retired: list[Controller] = []
        controllers: list[Controller] = []
        for spec in settings.controllers:
            previous = old.pop(spec.name, None)
            if previous is not None and previous.spec == spec:
                previous.configure_transport(transport)
                controllers.append(previous)
                kept.append(spec.name)
                continue
            controller = build_controller(spec, transport)
            await controller.start()
            controllers.append(controller)
            added.append(spec.name)
            if previous is not None:
                retired.append(previous)
        retired += old.values()
        self.settings = settings
        self.controllers[:] = controllers  # the scheduler holds this same list
        self.store.configure(controllers + retired, policy_of(settings))
        for controller in controllers:  # a rejected key or a missing deployment: the reload is the fix
            self.store.clear_disables(controller)
        apply_settings(self.store, settings)
        self.affinity.configure(settings.affinity_max_entries, settings.affinity_ttl)
        self.scheduler.balancer = make_balancer(settings.pool_type, self.store)
        self.scheduler.queue = QueuePolicy(settings.max_queue_wait, settings.max_queue_size)
        self.retries.configure(settings.retry_budget_ratio, settings.retry_budget_per_second)
        self._use_keys(settings)
        apply_client_settings(self.clients, settings)  # a removed client's key stops working here
        self.secrets = _secrets(controllers)
        self._discovered.clear()
        self._views_at = -VIEW_MAX_AGE
        for controller in retired:
            self._spawn(self._retire(controller))
        removed = [c.name for c in retired if c.name not in added]
        log.info("config reloaded: kept %s; new or changed %s; removed %s", kept or "none", added or "none",
                 removed or "none")
        self.scheduler.pump()

    async def _retire(self, controller: Controller) -> None:
        """Close a removed controller once its in-flight requests have finished."""
        while self.store.held(controller):  # noqa: ASYNC110 - a rare, short poll after a reload
            await asyncio.sleep(0.1)
        await controller.close()
        self.store.configure(self.controllers, policy_of(self.settings))

    async def start(self) -> None:
        """Open every controller's connection pool and join the shared state."""
        for controller in self.controllers:
            await controller.start()
        await self.store.start()
        await self.clients.start()

    async def close(self) -> None:
        """Close every controller's connection pool."""
        for task in list(self._background):
            task.cancel()
        await self.scheduler.close()
        await self.clients.close()
        await self.store.close()
        for controller in self.controllers:
            await controller.close()

    def enter(self, request: Abortable) -> None:
        """A request started."""
        self.active.add(request)
        self._idle.clear()

    def leave(self, request: Abortable) -> None:
        """A request ended."""
        self.active.discard(request)
        if not self.active:
            self._idle.set()

    def abort_all(self, reason: str) -> None:
        """End every request still in flight (after the shutdown timeout)."""
        for request in list(self.active):
            request.abort(reason)

    async def wait_idle(self, grace: float) -> bool:
        """Wait up to `grace` seconds for in-flight requests to end; True if they all did."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    def unready_because(self) -> Optional[str]:
        """Why the gateway cannot take requests now (draining; the store cannot admit: Redis is away and its
        outage rule is `refuse`; every controller disabled), or None. Controllers cooling down or ejected do
        not make it unready: requests wait for them (or probe them), and every instance shares that state,
        so a load balancer would pull the whole fleet at once."""
        store = self.store
        if self.draining:
            return "draining"
        if not store.admitting:
            return "the shared state (Redis) is unavailable and redis_fallback is refuse"
        if all(store.health(c, WHOLE).status == DISABLED for c in self.controllers):
            return "every controller is disabled (a rejected key, a quota that ran out: see /admin/controllers)"
        return None

    async def models(self) -> list[str]:
        """Declared model names, plus what controllers without a declared list report upstream; a model only
        disabled controllers serve (a rejected key, a missing deployment) is not offered."""
        names: set[str] = set()
        undeclared = []
        for controller in self.controllers:
            if controller.models is not None:
                names.update(self._usable(controller, controller.models))
            else:
                undeclared.append(controller)
        results = await asyncio.gather(*(self._discover(c) for c in undeclared))
        for controller, found in zip(undeclared, results, strict=True):
            names.update(self._usable(controller, found))
        return sorted(names)

    def _usable(self, controller: Controller, models: Iterable[str]) -> list[str]:
        """Leaves out what only a reload brings back (a rejected key, a missing deployment); a quota that
        ran out, or a cooldown, passes: the model is still there."""
        if self._gone_until_reload(controller, WHOLE):
            return []
        labelled = controller.stats.labels  # a model with no label of its own has no disable of its own
        return [m for m in models if m not in labelled or not self._gone_until_reload(controller, m)]

    def _gone_until_reload(self, controller: Controller, model: str) -> bool:
        health = self.store.health(controller, model)
        return health.status == DISABLED and math.isinf(health.wait)

    async def _discover(self, controller: Controller) -> list[str]:
        """The models `controller` reports, cached (failures too, briefly); one call at a time."""
        now = self.clock()
        cached = self._discovered.get(controller.name)
        if cached is not None:
            when, found = cached
            if now - when < (DISCOVERY_TTL if found is not None else DISCOVERY_FAILURE_TTL):
                return found if found is not None else self._last_known(controller)
        running = self._discovering.get(controller.name)
        if running is None:
            running = asyncio.ensure_future(self._ask(controller))
            self._discovering[controller.name] = running
            running.add_done_callback(lambda _f: self._discovering.pop(controller.name, None))
        return await asyncio.shield(running)

    async def _ask(self, controller: Controller) -> list[str]:
        previous = self._last_known(controller)
        try:
            found = await controller.discover_models()
        except Exception as exc:  # any SDK or network failure: report what we have, and ask again later
            log.warning("model discovery failed for controller %s (%s); retrying in %.0fs", controller.name,
                        type(exc).__name__, DISCOVERY_FAILURE_TTL)
            self._discovered[controller.name] = (self.clock(), None)
            return previous
        self._discovered[controller.name] = (self.clock(), found)
        controller.stats.known_models = frozenset(found)
        return found

    def _last_known(self, controller: Controller) -> list[str]:
        known = controller.stats.known_models
        return sorted(known) if known is not None and controller.models is None else []

    async def views(self) -> dict[str, ControllerView]:
        """Every controller's state, read from the store (with Redis: the shared truth)."""
        views = await self.store.views(self.controllers)
        self._views, self._views_at = views, self.clock()
        return views

    async def refresh_views(self, max_age: float = VIEW_MAX_AGE) -> None:
        """Read the views again if the cached ones are older than `max_age` seconds (for the metrics)."""
        if self.clock() - self._views_at >= max_age:
            await self.views()

    def cached_views(self) -> dict[str, ControllerView]:
        """The views last read."""
        return self._views

    async def describe(self) -> list[dict[str, Any]]:
        """Non-secret facts, live state and this instance's counts for every controller (the admin view)."""
        views = await self.views()
        return [{**controller.describe(), **views[controller.name].as_dict(), "counts": controller.stats.as_dict(),
                 "max_concurrency": controller.spec.limits.max_concurrency}
                for controller in self.controllers]
