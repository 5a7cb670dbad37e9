"""The gateway's live state: controllers, the balancer, and the model catalogue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from .config.settings import Settings
from .controllers import Controller, Transport, build_controller
from .ops.metrics import Metrics
from .scheduling.balancer import make_balancer
from .scheduling.scheduler import QueuePolicy, RetryBudget, Scheduler
from .state.health import FOREVER, BreakerPolicy, ControllerState
from .state.redis import SharedState
from .web.auth import KeyRing

log = logging.getLogger("chatgpt_apiserver.gateway")

DISCOVERY_TTL = 300.0


def _transport(settings: Settings) -> Transport:
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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.controllers = controllers
        self.clock = clock
        for controller in controllers:
            self._new_state(controller, settings)
        self.metrics = Metrics(lambda: self.controllers, lambda: self.in_flight,
                               lambda: self.scheduler.queue_length, clock)
        self.scheduler = Scheduler(controllers, make_balancer(settings.pool_type, clock=clock),
                                   QueuePolicy(settings.max_queue_wait, settings.max_queue_size), clock,
                                   self.metrics.queue_wait.observe)
        self.retries = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_per_second, clock)
        if settings.redis_url:
            self.scheduler.shared = SharedState(settings.redis_url.reveal(), settings.redis_prefix,
                                                settings.redis_timeout, settings.redis_fallback, self._shared_changed)
        self.draining = False
        self.active: set[Abortable] = set()
        self._use_keys(settings)
        self._idle = asyncio.Event()
        self._idle.set()
        self._discovered: dict[str, tuple[float, list[str]]] = {}
        self.secrets = _secrets(controllers)
        self._retiring: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.monotonic) -> Gateway:
        """Build every controller named in `settings`."""
        transport = _transport(settings)
        controllers = [build_controller(spec, transport) for spec in settings.controllers]
        return cls(settings, controllers, clock)

    def _use_keys(self, settings: Settings) -> None:
        self.client_keys = KeyRing(settings.client_keys)
        self.admin_keys = KeyRing([settings.admin_key] if settings.admin_key else [])

    @property
    def in_flight(self) -> int:
        """Requests being handled."""
        return len(self.active)

    def _new_state(self, controller: Controller, settings: Settings) -> None:
        policy = BreakerPolicy(settings.breaker_failures, settings.breaker_ejection, settings.breaker_max_ejection)
        controller.state = ControllerState(controller.name, controller.spec.limits, policy, self.clock())

    async def reload(self, settings: Settings) -> None:
        """Swap in a new config: unchanged controllers keep their state, new ones join, removed ones drain."""
        old = {controller.name: controller for controller in self.controllers}
        transport = _transport(settings)
        kept: list[str] = []
        added: list[str] = []
        retired: list[Controller] = []
        controllers: list[Controller] = []
        for spec in settings.controllers:
            previous = old.pop(spec.name, None)
            if previous is not None and previous.spec == spec:
                if previous.state.disabled_until == FOREVER:  # a rejected key: the reload is the fix
                    previous.state.disabled_until, previous.state.disabled_reason = 0.0, ""
                controllers.append(previous)
                kept.append(spec.name)
                continue
            controller = build_controller(spec, transport)
            self._new_state(controller, settings)
            await controller.start()
            controllers.append(controller)
            added.append(spec.name)
            if previous is not None:
                retired.append(previous)
        retired += old.values()
        self.settings = settings
        self.controllers[:] = controllers  # the scheduler holds this same list
        self.scheduler.balancer = make_balancer(settings.pool_type, clock=self.clock)
        self.scheduler.queue = QueuePolicy(settings.max_queue_wait, settings.max_queue_size)
        self._use_keys(settings)
        self.secrets = _secrets(controllers)
        self._discovered.clear()
        for controller in retired:
            task = asyncio.get_running_loop().create_task(self._retire(controller))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        log.info("config reloaded: kept %s; new or changed %s; removed %s", kept or "none", added or "none",
                 [c.name for c in retired] or "none")
        self.scheduler.pump()

    async def _retire(self, controller: Controller) -> None:
        """Close a removed controller once its in-flight requests have finished."""
        while controller.state.in_flight:  # noqa: ASYNC110 - a rare, short poll after a reload
            await asyncio.sleep(0.1)
        await controller.close()

    async def start(self) -> None:
        """Open every controller's connection pool, and join the shared state when there is one."""
        for controller in self.controllers:
            await controller.start()
        if self.scheduler.shared is not None:
            await self.scheduler.shared.start()

    def _shared_changed(self, available: bool, instances: int) -> None:
        """Redis went away (each instance now keeps 1/N of every limit locally) or came back."""
        now = self.clock()
        for controller in self.controllers:
            controller.state.rescale(1.0 if available else 1.0 / instances, now)

    async def close(self) -> None:
        """Close every controller's connection pool."""
        for task in self._retiring:
            task.cancel()
        if self.scheduler.shared is not None:
            await self.scheduler.shared.close()
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

    @property
    def ready(self) -> bool:
        """At least one controller is not disabled, cooling or ejected, and the server is not draining."""
        now = self.clock()
        return not self.draining and any(c.state.status(now) == "ok" for c in self.controllers)

    async def models(self) -> list[str]:
        """Declared model names, plus what controllers without a declared list report upstream."""
        names: set[str] = set()
        undeclared = []
        for controller in self.controllers:
            if controller.models is not None:
                names.update(controller.models)
            else:
                undeclared.append(controller)
        results = await asyncio.gather(*(self._discover(c) for c in undeclared))
        for found in results:
            names.update(found)
        return sorted(names)

    async def _discover(self, controller: Controller) -> list[str]:
        now = self.clock()
        cached = self._discovered.get(controller.name)
        if cached and now - cached[0] < DISCOVERY_TTL:
            return cached[1]
        try:
            found = await controller.discover_models()
        except Exception as exc:  # any SDK or network failure: report what we have
            log.warning("model discovery failed for controller %s: %s", controller.name, type(exc).__name__)
            return cached[1] if cached else []
        self._discovered[controller.name] = (now, found)
        return found

    def describe(self) -> list[dict[str, Any]]:
        """Non-secret facts and live state of every controller (the admin view)."""
        now = self.clock()
        return [{**controller.describe(), **controller.state.snapshot(now)} for controller in self.controllers]
