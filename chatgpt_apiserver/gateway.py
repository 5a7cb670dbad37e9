"""The gateway's live state: controllers, the balancer, and the model catalogue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .balancer import make_balancer
from .config import Settings
from .controllers import Controller, Transport, build_controller
from .health import BreakerPolicy, ControllerState
from .scheduler import QueuePolicy, RetryBudget, Scheduler

log = logging.getLogger("chatgpt_apiserver.gateway")

DISCOVERY_TTL = 300.0


class Gateway:
    """Everything a request handler needs to route a call: who serves a model, and in what order."""

    def __init__(self, settings: Settings, controllers: list[Controller],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.controllers = controllers
        self.clock = clock
        policy = BreakerPolicy(settings.breaker_failures, settings.breaker_ejection, settings.breaker_max_ejection)
        for controller in controllers:
            controller.state = ControllerState(controller.name, controller.spec.limits, policy, clock())
        self.scheduler = Scheduler(controllers, make_balancer(settings.pool_type, clock=clock),
                                   QueuePolicy(settings.max_queue_wait, settings.max_queue_size), clock)
        self.retries = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_per_second, clock)
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._discovered: dict[str, tuple[float, list[str]]] = {}
        secrets: list[bytes] = []
        for controller in controllers:
            secrets.extend(getattr(controller, "secret_values", ()))
        self.secrets: tuple[bytes, ...] = tuple(secrets)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.monotonic) -> Gateway:
        """Build every controller named in `settings`."""
        transport = Transport(
            connect_timeout=settings.connect_timeout,
            idle_timeout=settings.stream_idle_timeout,
            max_connections=settings.upstream_max_connections,
            keepalive_timeout=settings.upstream_keepalive_timeout,
        )
        controllers = [build_controller(spec, transport) for spec in settings.controllers]
        return cls(settings, controllers, clock)

    async def start(self) -> None:
        """Open every controller's connection pool."""
        for controller in self.controllers:
            await controller.start()

    async def close(self) -> None:
        """Close every controller's connection pool."""
        for controller in self.controllers:
            await controller.close()

    def enter(self) -> None:
        """A request started."""
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        """A request ended."""
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

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
