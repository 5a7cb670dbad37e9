"""Logging set-up: text or JSON lines, with anything key-like scrubbed from every record."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Optional, TextIO, Union

import orjson

from ..secret import scrub_text

DEFERRED_LINE_SIZE = 256  # what a deferred line counts towards the flush limit before it is rendered


class ScrubSecrets(logging.Filter):
    """Rewrites each record's message with key-like strings and the configured secrets redacted."""

    def __init__(self, secrets: tuple[bytes, ...] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "k-" in message or self.secrets:
            cleaned = scrub_text(message, self.secrets)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class BufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes info lines in batches (the server flushes every quarter second); warnings and errors at once.

    One write system call per access-log line is a measurable share of a request's cost.
    """

    def __init__(self, stream: TextIO, limit: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.limit = limit
        self._pending: list[Union[str, tuple[Callable[[Any], str], Any]]] = []
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        self._size += len(line)
        if record.levelno >= logging.WARNING or self._size >= self.limit:
            self.flush()

    def defer(self, render: Callable[[Any], str], item: Any) -> None:
        """Queue a line as `render(item)`, rendered at the next flush (the access log's fast path).

        Rendering a batch of lines at once costs a fraction of rendering each between two requests.
        """
        self.acquire()
        try:
            self._pending.append((render, item))
            self._size += DEFERRED_LINE_SIZE
            if self._size >= self.limit:
                self.flush()
        finally:
            self.release()

    def flush(self) -> None:
        """Write what is pending, in the order it came."""
        self.acquire()  # re-entrant: emit() already holds it when it flushes
        try:
            if self._pending:
                pending, self._pending, self._size = self._pending, [], 0
                self.stream.write("".join([p if isinstance(p, str) else _render(*p) for p in pending]))
                self.stream.flush()
        finally:
            self.release()


def _render(render: Callable[[Any], str], item: Any) -> str:
    try:
        return render(item)
    except Exception as exc:  # one bad line must not cost the others, nor stop the flushing
        return f"(a log line could not be rendered: {type(exc).__name__})\n"


class LineStamp:
    """The time prefix of a log line, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""
        self._iso = ""

    def _refresh(self, now: float) -> int:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return int((now - second) * 1000)

    def text_parts(self, now: float) -> tuple[str, int]:
        """As logging's default asctime, 2026-11-25 17:21:23,438, in two parts: up to the second, and millis."""
        millis = self._refresh(now)  # first: it may move the second on
        return self._text, millis

    def iso(self, now: float) -> str:
        """As the JSON formatter's time: 2026-11-25T17:21:23.438Z."""
        millis = self._refresh(now)
        return f"{self._iso}.{millis:03d}Z"


def fast_handler() -> Optional[BufferedHandler]:
    """The handler the access log may write to directly: the one configure_logging installed, if it is alone."""
    handlers = logging.getLogger().handlers
    if len(handlers) == 1 and isinstance(handlers[0], BufferedHandler):
        return handlers[0]
    return None


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def apply_logging(level: str, fmt: str) -> None:
    """A reload: the new level and format take effect on the handlers configure_logging installed."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if isinstance(handler, BufferedHandler) and isinstance(handler.formatter, JsonFormatter) != (fmt == "json"):
            handler.flush()  # lines already queued keep the format they were logged in
            handler.setFormatter(_formatter(fmt))


def configure_logging(level: str, fmt: str, stream: Optional[TextIO] = None,
                      secrets: tuple[bytes, ...] = ()) -> logging.Handler:
    """Route every log record to one buffered stream handler; return it (tests swap streams)."""
    handler = BufferedHandler(stream or sys.stderr)
    handler.setFormatter(_formatter(fmt))
    handler.addFilter(ScrubSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
