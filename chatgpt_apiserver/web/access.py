"""One access-log line and one metrics update per finished request."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from tornado.web import RequestHandler

from ..endpoints.base import MAX_LABEL_LENGTH
from ..gateway import Gateway
from ..ops.logs import JsonFormatter, LineStamp, escape_controls, fast_handler, json_line

access_log = logging.getLogger("chatgpt_apiserver.access")

FIELDS = ("request_id", "client", "peer", "method", "path", "model", "stream", "controller", "attempts", "status",
          "bytes", "time_ms", "ttfb_ms", "tokens", "upstream_request_id")
TEXT_PREFIX = f" INFO {access_log.name}: "

# What a request leaves for its line: the wall time it ended, then FIELDS with both times in seconds.
Entry = tuple[Any, ...]


def route_of(handler: RequestHandler) -> str:
    """A low-cardinality route label: the handler's declared route, never the raw path."""
    return getattr(handler, "route", "other")


def _values(entry: Entry) -> tuple[Any, ...]:
    values = entry[1:]
    seconds, ttfb = values[11], values[12]
    return (*values[:11], round(seconds * 1000, 2), round((ttfb if ttfb is not None else seconds) * 1000, 2),
            *values[13:])


_PLAIN = re.compile(r"[!#-<>-\[\]-~]+")  # printable ASCII but space, quote, backslash and =
# The client's text as a line shows it, for the few methods, paths and models most lines repeat: a dict lookup
# where the check is a regex match. Emptied when full (paths that carry ids would otherwise fill it for good).
_WRITTEN: dict[str, str] = {}
WRITTEN_KEPT = 1024
WRITTEN_LONGEST = 200  # characters of a value worth keeping


def text_value(value: Any) -> str:
    """A field's value for a key=value line: bare when plain, else quoted with control characters escaped.

    The path, the model and the method come from the client: a newline could forge a line of its own, and
    a space or a quote a field of its own.
    """
    text = str(value)
    written = _WRITTEN.get(text)
    if written is not None:
        return written
    if _PLAIN.fullmatch(text):
        written = text
    else:
        written = '"' + escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
    if len(text) <= WRITTEN_LONGEST:
        if len(_WRITTEN) >= WRITTEN_KEPT:
            _WRITTEN.clear()
        _WRITTEN[text] = written
    return written


def _message(entry: Entry) -> str:
    """The line's key=value fields, FIELDS in order (the text line, and the JSON line's message).

    Only the method, the path and the model are the client's text; the other fields are numbers, or tokens
    checked against a safe charset already (request ids, client and controller names, the peer's address).
    (One f-string: a third of the cost of formatting the fields one by one, in the access log's writer.)
    """
    seconds, ttfb = entry[12], entry[13]
    return (f"request_id={entry[1]} client={entry[2]} peer={entry[3]} method={text_value(entry[4])} "
            f"path={text_value(entry[5])} model={text_value(entry[6])} stream={entry[7]} controller={entry[8]} "
            f"attempts={entry[9]} status={entry[10]} bytes={entry[11]} time_ms={seconds * 1000:.2f} "
            f"ttfb_ms={(ttfb if ttfb is not None else seconds) * 1000:.2f} tokens={entry[14]} "
            f"upstream_request_id={entry[15]}")


class _Lines:
    """Renders entries as log lines; the buffered handler calls these in a batch when it flushes."""

    def __init__(self) -> None:
        self.stamp = LineStamp()

    def text(self, entry: Entry) -> str:
        stamp, millis = self.stamp.text_parts(entry[0])
        return f"{stamp},{millis:03d}{TEXT_PREFIX}{_message(entry)}\n"

    def json(self, entry: Entry) -> str:
        return json_line({"time": self.stamp.iso(entry[0]), "level": "info", "logger": access_log.name,
                          "message": _message(entry), **dict(zip(FIELDS, _values(entry), strict=True))}) + "\n"


def make_log_function(gateway: Gateway, enabled: Callable[[], bool]) -> Callable[[RequestHandler], None]:
    """Tornado's log_function: count the request in the metrics and, if enabled, log it.

    A request only records its entry: the line is rendered when the buffer is flushed, many at a time,
    which costs a fraction of rendering each between requests.
    """
    lines = _Lines()

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
        client = getattr(handler, "client", None)
        model = getattr(handler, "model", "") or "-"
        if len(model) > MAX_LABEL_LENGTH:
            model = model[:MAX_LABEL_LENGTH] + "…"  # a client may name any string: the line stays short
        entry = (time.time(), getattr(handler, "request_id", "") or "-", client.name if client is not None else "-",
                 request.remote_ip, request.method, request.path, model, bool(getattr(handler, "stream", False)),
                 controller, getattr(handler, "attempts", 0), status, getattr(handler, "bytes_out", 0), seconds,
                 getattr(handler, "ttfb", None), getattr(handler, "tokens", None),
                 getattr(handler, "upstream_request_id", "") or "-")
        sink = fast_handler() if level == logging.INFO and not access_log.handlers else None
        if sink is not None:
            sink.defer(lines.json if isinstance(sink.formatter, JsonFormatter) else lines.text, entry)
            return
        _log_record(level, entry)

    return log_request


def _log_record(level: int, entry: Entry) -> None:
    """Through the logging machinery, for set-ups with other handlers (tests, embedding applications)."""
    access_log.log(level, _message(entry), extra={"fields": dict(zip(FIELDS, _values(entry), strict=True))})
