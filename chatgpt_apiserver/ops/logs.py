"""Logging set-up: text or JSON lines, written from a thread, with every secret scrubbed from every line."""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Optional, TextIO, Union

import orjson

from ..secret import scrub_text

DEFERRED_LINE_SIZE = 256  # what a deferred line counts towards the flush limit before it is rendered
MAX_BATCHES = 64  # batches of up to `limit` bytes waiting for the writer: 4 MiB at the default limit
MAX_SECRETS = 1000  # values the scrubber remembers across reloads
CLOSE_WAIT = 2.0  # seconds close() waits for the writer: a stuck log pipe must not hang the exit

# Control characters (C0 but tab, DEL, C1) and the Unicode line separators: each could end a text line early
# or drive a terminal. Escaped, a logged value can never forge a line of its own.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r"}

Pending = Union[str, tuple[Callable[[Any], str], Any]]


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (\\n, \\r, \\x1b, \\u2028)."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                               else f"\\u{ord(m.group()):04x}"), text)


def json_line(entry: dict[str, Any]) -> str:
    """`entry` as one line of JSON; the Unicode line separators, legal raw in JSON, are escaped too."""
    line = orjson.dumps(entry).decode()
    if "\u2028" in line or "\u2029" in line:
        line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return line


class TextFormatter(logging.Formatter):
    """logging's text format, with control characters in the message escaped: one record, one line.

    A traceback keeps its lines: it follows the message, and what it quotes is ours, not a client's.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


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
        return json_line(entry)


class BufferedHandler(logging.Handler):
    """Collects lines on the caller's thread and hands them in batches to a writer thread.

    The server hands a batch over every quarter second (warnings and errors at once). The writer renders
    deferred lines, scrubs every secret from the whole text (message, fields, traceback alike), and
    writes. A slow or stuck stream (journald, a Docker log pipe) so never stalls the event loop: at most
    MAX_BATCHES wait, and past that whole batches are dropped and counted, and the count is logged once
    the stream moves again.
    """

    terminator = "\n"

    def __init__(self, stream: TextIO, limit: int = 64 * 1024, secrets: tuple[bytes, ...] = (),
                 max_batches: int = MAX_BATCHES) -> None:
        super().__init__()
        assert self.lock is not None  # (createLock made it)
        self._lock = self.lock  # the handler's own lock, typed as never None
        self.stream = stream
        self.limit = limit
        self.secrets = secrets  # replaced whole (never mutated), so the writer reads a consistent tuple
        self.dropped = 0
        self._pending: list[Pending] = []
        self._size = 0
        self._batches: queue.Queue[Optional[list[Pending]]] = queue.Queue(max_batches)
        self._handed = 0
        self._written = 0
        self._progress = threading.Condition()
        self._writer = threading.Thread(target=self._write_batches, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)  # handle() holds the lock
        self._size += len(line)
        if record.levelno >= logging.WARNING or self._size >= self.limit:
            self.flush()

    def defer(self, render: Callable[[Any], str], item: Any) -> None:
        """Queue a line as `render(item)`, rendered by the writer (the access log's fast path).

        Rendering a batch of lines at once, off the event loop, costs a fraction of rendering each between
        two requests.
        """
        with self._lock:  # (what acquire() and release() do, without two calls per request)
            self._pending.append((render, item))
            self._size += DEFERRED_LINE_SIZE
            if self._size >= self.limit:
                self.flush()

    def flush(self) -> None:
        """Hand what is pending to the writer; never waits for the stream."""
        self.acquire()  # re-entrant: emit() already holds it when it flushes
        try:
            if not self._pending:
                return
            batch, self._pending, self._size = self._pending, [], 0
            notice: list[Pending] = []
            if self.dropped:
                notice = [f"{self.dropped} log line(s) were dropped: the log stream did not keep up\n"]
            try:
                self._batches.put_nowait(notice + batch)
            except queue.Full:
                self.dropped += len(batch)
                return
            self.dropped = 0
            self._handed += 1
        finally:
            self.release()

    def wait_written(self, timeout: float) -> bool:
        """Wait until every batch handed over so far is written; False if `timeout` passed first."""
        self.acquire()
        try:
            target = self._handed
        finally:
            self.release()
        with self._progress:
            return self._progress.wait_for(lambda: self._written >= target, timeout)

    def close(self) -> None:
        """Write what is pending (waiting at most CLOSE_WAIT seconds), then stop the writer."""
        self.flush()
        with contextlib.suppress(queue.Full):
            self._batches.put(None, timeout=CLOSE_WAIT)
        self._writer.join(CLOSE_WAIT)
        super().close()

    def _write_batches(self) -> None:
        while True:
            batch = self._batches.get()
            if batch is None:
                return
            text = "".join([p if isinstance(p, str) else _render(*p) for p in batch])
            try:
                self.stream.write(scrub_text(text, self.secrets))
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stream: there is nowhere left to report it
            with self._progress:
                self._written += 1
                self._progress.notify_all()


def _render(render: Callable[[Any], str], item: Any) -> str:
    try:
        return render(item)
    except Exception as exc:  # one bad line must not cost the others, nor stop the writer
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


def _installed() -> list[BufferedHandler]:
    return [handler for handler in logging.getLogger().handlers if isinstance(handler, BufferedHandler)]


def fast_handler() -> Optional[BufferedHandler]:
    """The handler the access log may write to directly: the one configure_logging installed, if it is alone."""
    handlers = logging.getLogger().handlers
    if len(handlers) == 1 and isinstance(handlers[0], BufferedHandler):
        return handlers[0]
    return None


def use_secrets(secrets: tuple[bytes, ...], forget: tuple[bytes, ...] = ()) -> None:
    """Scrub these values (every key and secret header value in use) from every line from now on.

    Values known before stay known: a key a reload removed is still a key, and lines logged before the
    reload may not be written yet. The newest MAX_SECRETS are kept. `forget`: values no longer worth a place
    (a token renewed twice since; renewals would otherwise push the configured keys out).
    """
    for handler in _installed():
        known = dict.fromkeys(handler.secrets)
        for value in forget:
            known.pop(value, None)
        for value in secrets:
            known.pop(value, None)
            known[value] = None
        handler.secrets = tuple(known)[-MAX_SECRETS:]


def flush_logs() -> None:
    """Hand every buffered line to its writer."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def apply_logging(level: str, fmt: str) -> None:
    """A reload: the new level and format take effect on the handlers configure_logging installed."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in _installed():
        if isinstance(handler.formatter, JsonFormatter) != (fmt == "json"):
            handler.flush()  # lines already queued keep the format they were logged in
            handler.setFormatter(_formatter(fmt))


def configure_logging(level: str, fmt: str, stream: Optional[TextIO] = None,
                      secrets: tuple[bytes, ...] = ()) -> BufferedHandler:
    """Route every log record to one buffered, threaded stream handler; return it (tests swap streams)."""
    handler = BufferedHandler(stream or sys.stderr, secrets=secrets)
    handler.setFormatter(_formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, BufferedHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
