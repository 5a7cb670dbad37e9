"""Accepting connections, with a pause when the process runs out of file descriptors.

Tornado's accept loop meets EMFILE by raising: the listening socket stays readable, so the loop calls it
again at once, and each call logs a traceback (tens of thousands a second, at full CPU). Here accepting
stops for a moment instead, and the condition is logged once per interval.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Optional

from tornado.ioloop import IOLoop

log = logging.getLogger("chatgpt_apiserver.accept")

OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
BATCH = 128  # connections accepted per readiness event, as Tornado does, so one listener cannot starve the loop


class Acceptor:
    """Accepts connections on one listening socket and hands each to `on_connection`."""

    def __init__(self, sock: socket.socket, on_connection: Callable[[socket.socket, Any], None],
                 pause: float = 0.5, report_every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = sock
        self.on_connection = on_connection
        self.pause = pause
        self.report_every = report_every
        self.clock = clock
        self.paused = 0  # times accepting was paused since the last report
        self._reported = -report_every
        self._loop = IOLoop.current()
        self._resume: Optional[object] = None
        self._removed = False
        self._loop.add_handler(sock, self._on_readable, IOLoop.READ)

    def _on_readable(self, _fd: Any, _events: int) -> None:
        for _ in range(BATCH):
            if self._removed:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue  # the client gave up while it waited in the backlog
            except OSError as error:
                if error.errno not in OUT_OF_RESOURCES:
                    raise
                self._back_off(error)
                return
            self.on_connection(connection, address)

    def _back_off(self, error: OSError) -> None:
        """Stop watching the socket for `pause` seconds: the backlog holds new clients meanwhile."""
        self._loop.remove_handler(self.sock)
        self._resume = self._loop.call_later(self.pause, self._resume_accepting)
        self.paused += 1
        now = self.clock()
        if now - self._reported >= self.report_every:
            log.error("cannot accept connections: %s (%s); accepting pauses for %g s each time (%d pause(s) "
                      "since the last report). Raise the file limit (LimitNOFILE, ulimit -n) or lower the load.",
                      error.strerror, errno.errorcode.get(error.errno or 0, "?"), self.pause, self.paused)
            self._reported, self.paused = now, 0

    def _resume_accepting(self) -> None:
        self._resume = None
        if not self._removed:
            self._loop.add_handler(self.sock, self._on_readable, IOLoop.READ)

    def remove(self) -> None:
        """Stop accepting for good (the server's stop())."""
        if self._removed:
            return
        self._removed = True
        if self._resume is not None:
            self._loop.remove_timeout(self._resume)
            self._resume = None
        else:
            self._loop.remove_handler(self.sock)
