"""The route table: every handler receives the gateway through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from tornado.web import Application

from ..gateway import Gateway
from .access import make_log_function
from .bodies import Bodies
from .handlers import (
    AdminControllersHandler,
    ChatCompletionsHandler,
    HealthHandler,
    MetricsHandler,
    ModelsHandler,
    NotFoundHandler,
    ReadyHandler,
    StatusHandler,
    StatusPageHandler,
)

STATUS_PAGE = Path(__file__).with_name("static") / "status.html"


def make_app(gateway: Gateway, bodies: Optional[Bodies] = None) -> Application:
    """The Tornado application for `gateway`; `bodies` tracks request bodies (the server shares it)."""
    if bodies is None:
        bodies = Bodies(lambda: gateway.settings.max_buffered_body_bytes)
    deps: dict[str, Any] = {"gateway": gateway, "bodies": bodies}
    routes = [
        (r"/v1/chat/completions/?", ChatCompletionsHandler, deps),
        (r"/v1/models/?", ModelsHandler, deps),
        (r"/status/?", StatusHandler, deps),
        (r"/healthz/?", HealthHandler, deps),
        (r"/readyz/?", ReadyHandler, deps),
        (r"/admin/controllers/?", AdminControllersHandler, deps),
        (r"/metrics/?", MetricsHandler, deps),
        (r"/(?:dashboard/?)?", StatusPageHandler, {**deps, "page": STATUS_PAGE.read_bytes()}),
    ]
    return Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=make_log_function(gateway, lambda: bool(gateway.settings.access_log)),
        compress_response=False,
        cors_origins=gateway.settings.cors_origins,
    )
