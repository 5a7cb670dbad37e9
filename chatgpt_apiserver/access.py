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
        fields = {
            "request_id": getattr(handler, "request_id", "") or "-",
            "client": request.remote_ip,
            "method": request.method,
            "path": request.path,
            "model": getattr(handler, "model", "") or "-",
            "stream": bool(getattr(handler, "stream", False)),
            "controller": controller,
            "attempts": getattr(handler, "attempts", 0),
            "status": status,
            "bytes": getattr(handler, "bytes_out", 0),
            "time_ms": round(seconds * 1000, 2),
            "ttfb_ms": round((ttfb if ttfb is not None else seconds) * 1000, 2),
            "tokens": getattr(handler, "tokens", None),
        }
        message = " ".join(f"{key}={value}" for key, value in fields.items())
        sink = fast_handler() if level == logging.INFO and not access_log.handlers else None
        if sink is None:
            access_log.log(level, message, extra={"fields": fields})
        elif isinstance(sink.formatter, JsonFormatter):
            now = time.time()
            sink.append(orjson.dumps({"time": stamp.iso(now), "level": "info", "logger": access_log.name,
                                         "message": message, **fields}).decode() + "\n")
        else:
            sink.append(f"{stamp.text(time.time())} INFO {access_log.name}: {message}\n")

    return log_request
