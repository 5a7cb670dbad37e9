"""One access-log line and one metrics update per finished request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
from tornado.web import RequestHandler

from .gateway import Gateway
from .logs import JsonFormatter, LineStamp, fast_handler

access_log = logging.getLogger("chatgpt_apiserver.access")

FIELDS = ("request_id", "client", "method", "path", "model", "stream", "controller", "attempts", "status", "bytes",
          "time_ms", "ttfb_ms", "tokens")
TEXT_LINE = " ".join(f"{name}={{}}" for name in FIELDS)


def route_of(handler: RequestHandler) -> str:
    """A low-cardinality route label: the handler's declared route, never the raw path."""
    return getattr(handler, "route", "other")


def make_log_function(gateway: Gateway, enabled: Callable[[], bool]) -> Callable[[RequestHandler], None]:
    """Tornado's log_function: count the request in the metrics and, if enabled, log it."""

    stamp = LineStamp()

    def log_request(handler: RequestHandler) -> None:
        request = handler.request
        status = handler.get_status()
        seconds = request.request_time()
        controller = getattr(handler, "controller", "") or "-"
        gateway.metrics.request_done(route_of(handler), status, controller, seconds)
        if not enabled():
            return
        level = logging.INFO if status < 500 else logging.ERROR
        if not access_log.isEnabledFor(level):
            return
        ttfb = getattr(handler, "ttfb", None)
        values = (getattr(handler, "request_id", "") or "-", request.remote_ip, request.method, request.path,
                  getattr(handler, "model", "") or "-", bool(getattr(handler, "stream", False)), controller,
                  getattr(handler, "attempts", 0), status, getattr(handler, "bytes_out", 0), round(seconds * 1000, 2),
                  round((ttfb if ttfb is not None else seconds) * 1000, 2), getattr(handler, "tokens", None))
        message = TEXT_LINE.format(*values)
        sink = fast_handler() if level == logging.INFO and not access_log.handlers else None
        if sink is not None and not isinstance(sink.formatter, JsonFormatter):
            sink.append(f"{stamp.text(time.time())} INFO {access_log.name}: {message}\n")  # the common case
            return
        fields = dict(zip(FIELDS, values, strict=True))
        if sink is None:
            access_log.log(level, message, extra={"fields": fields})
        else:
            sink.append(orjson.dumps({"time": stamp.iso(time.time()), "level": "info", "logger": access_log.name,
                                      "message": message, **fields}).decode() + "\n")

    return log_request
