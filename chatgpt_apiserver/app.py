"""The route table: every handler receives the gateway through it."""

from __future__ import annotations

import logging

from tornado.web import Application, RequestHandler

from .gateway import Gateway
from .handlers import (
    AdminControllersHandler,
    ChatCompletionsHandler,
    HealthHandler,
    ModelsHandler,
    NotFoundHandler,
    ReadyHandler,
    StatusHandler,
)

access_log = logging.getLogger("chatgpt_apiserver.access")


def _log_request(handler: RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        request = handler.request
        access_log.log(level, "%d %s %s %s %.2fms id=%s controller=%s", status, request.method, request.path,
                       request.remote_ip, 1000.0 * request.request_time(),
                       getattr(handler, "request_id", "-") or "-",
                       handler._headers.get("X-Chatgpt-Apiserver-Controller", "-"))


def make_app(gateway: Gateway) -> Application:
    """The Tornado application for `gateway`."""
    deps = {"gateway": gateway}
    routes = [
        (r"/v1/chat/completions/?", ChatCompletionsHandler, deps),
        (r"/v1/models/?", ModelsHandler, deps),
        (r"/status/?", StatusHandler, deps),
        (r"/healthz/?", HealthHandler, deps),
        (r"/readyz/?", ReadyHandler, deps),
        (r"/admin/controllers/?", AdminControllersHandler, deps),
    ]
    return Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=_log_request if gateway.settings.access_log else (lambda handler: None),
        compress_response=False,
        cors_origins=gateway.settings.cors_origins,
    )
