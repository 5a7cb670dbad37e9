"""The gateway's own routes: the model list, admin, metrics, health, the status page, and JSON 404s.

The relayed OpenAI endpoints are served by `api.py`."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from tornado.web import HTTPError

from ..errors import ApiError
from ..gateway import Gateway
from ..state import StoreUnavailable
from .base import BaseHandler
from .bodies import Bodies

log = logging.getLogger("chatgpt_apiserver.handlers")


class ModelsHandler(BaseHandler):
    """GET /v1/models: every model some controller serves, in OpenAI's list shape."""

    route = "models"

    async def get(self, *args: Any) -> None:
        names = await self.gateway.models()
        allowed = self.client.spec.models if self.client is not None else None
        if allowed is not None:
            names = [name for name in names if name in allowed]  # only what this client may use
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "chatgpt-apiserver"} for name in names]
        for header, value in (await self.rate_limit_levels()).items():
            self.set_header(header, value)
        self.write_json({"object": "list", "data": data})


class AdminControllersHandler(BaseHandler):
    """GET /admin/controllers: every controller's limits, bucket levels, state and counts."""

    access = "admin"
    route = "admin"

    async def get(self) -> None:
        gateway = self.gateway
        self.write_json({"controllers": await gateway.describe(), "queue_length": gateway.scheduler.queue_length,
                         "in_flight": gateway.in_flight, "draining": gateway.draining,
                         "body_bytes_held": self.bodies.held})


class AdminClientsHandler(BaseHandler):
    """GET /admin/clients (or /admin/clients/{name}): each client's limits, live state, budget and usage."""

    access = "admin"
    route = "admin"

    async def get(self, name: str = "") -> None:
        gateway = self.gateway
        clients = gateway.clients
        if name and name not in clients.registry.by_name:
            raise ApiError(404, f"No client is named {name!r}.", code="unknown_client")
        try:
            described = await clients.describe(lambda client: gateway.scheduler.waiting(client.tenant))
        except StoreUnavailable:
            raise ApiError(503, "The shared client state (Redis) is unavailable; retry shortly.",
                           code="shared_state_unavailable", headers={"Retry-After": "1"}) from None
        if name:
            self.write_json(next(c for c in described["clients"] if c["name"] == name))
            return
        self.write_json(described)


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text."""

    access = "admin"
    route = "metrics"

    async def get(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # the metrics then show the views last read
            await self.gateway.refresh_views()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.gateway.metrics.render())


class StatusPageHandler(BaseHandler):
    """GET / and /dashboard: the live status page (one static file that reads /admin/controllers)."""

    access = "open"  # the page itself holds no data; it asks for the admin key when the data needs one
    route = "status_page"

    def initialize(self, gateway: Gateway, bodies: Bodies, page: bytes = b"") -> None:
        super().initialize(gateway, bodies)
        self.page = page  # read once, when the application is built

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.page)

    head = get


class StatusHandler(BaseHandler):
    """GET /status: the original server's liveness answer."""

    access = "open"
    route = "status"

    def get(self) -> None:
        self.write_json({"status": "ok"})

    head = get


class HealthHandler(BaseHandler):
    """GET /healthz: the process is alive and its event loop turns."""

    access = "open"
    route = "healthz"

    def get(self) -> None:
        self.write_json({"status": "ok"})

    head = get


class ReadyHandler(BaseHandler):
    """GET /readyz: at least one controller can take requests."""

    access = "open"
    route = "readyz"

    def get(self) -> None:
        because = self.gateway.unready_because()
        if because is None:
            self.write_json({"status": "ready", "controllers": len(self.gateway.controllers)})
        else:
            self.set_header("Retry-After", "1")
            self.write_json({"status": "not ready", "draining": self.gateway.draining, "reason": because},
                            status=503)

    head = get


class NotFoundHandler(BaseHandler):
    """Any unknown path: a JSON 404 for every method."""

    access = "open"

    def prepare(self) -> None:
        self.identify()
        if not self.is_preflight():  # a preflight to any path is answered, so the browser shows the 404
            raise HTTPError(404)

