"""The route table: every handler receives the gateway through it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from ..endpoints.base import Endpoint
from ..endpoints.catalog import ENDPOINTS
from ..gateway import Gateway
from .access import make_log_function
from .api import EndpointHandler, ModelHandler
from .bodies import Bodies
from .delegate import GatewayApplication
from .handlers import (
    AdminClientsHandler,
    AdminControllersHandler,
    HealthHandler,
    MetricsHandler,
    ModelsHandler,
    NotFoundHandler,
    ReadyHandler,
    StatusHandler,
    StatusPageHandler,
)

STATUS_PAGE = Path(__file__).with_name("static") / "status.html"


def endpoint_routes(deps: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    """One route per path of the endpoint catalogue, taking each method its endpoints declare (in order)."""
    paths: dict[str, dict[str, Endpoint]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method] = endpoint
    return [("/v1" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "/?", EndpointHandler,
             {**deps, "endpoints": methods}) for path, methods in paths.items()]


def make_app(gateway: Gateway, bodies: Optional[Bodies] = None) -> GatewayApplication:
    """The Tornado application for `gateway`; `bodies` tracks request bodies (the server shares it)."""
    if bodies is None:
        bodies = Bodies(lambda: gateway.settings.max_buffered_body_bytes)
    deps: dict[str, Any] = {"gateway": gateway, "bodies": bodies}
    routes: list[tuple[str, type, dict[str, Any]]] = [
        *endpoint_routes(deps),
        (r"/v1/models/?", ModelsHandler, deps),
        (r"/v1/models/(?P<model>.+?)/?", ModelHandler, deps),
        (r"/status/?", StatusHandler, deps),
        (r"/healthz/?", HealthHandler, deps),
        (r"/readyz/?", ReadyHandler, deps),
        (r"/admin/controllers/?", AdminControllersHandler, deps),
        (r"/admin/clients/?", AdminClientsHandler, deps),
        (r"/admin/clients/(?P<name>[^/]+)/?", AdminClientsHandler, deps),
        (r"/metrics/?", MetricsHandler, deps),
        (r"/(?:dashboard/?)?", StatusPageHandler, {**deps, "page": STATUS_PAGE.read_bytes()}),
    ]
    return GatewayApplication(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=make_log_function(gateway, lambda: bool(gateway.settings.access_log)),
        compress_response=False,
        cors_origins=gateway.settings.cors_origins,
    )
