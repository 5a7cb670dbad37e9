"""Client state on disk without Redis: `<state_dir>/clients.json`, written atomically every few seconds (when
something changed) and at shutdown, read at start.

A write goes to a temporary file in the same directory, is flushed to disk, then renamed over the old one:
a crash leaves the old file or the new one, never half of one. A file that cannot be read is set aside
(`clients.json.unreadable`) and logged; the gateway starts with empty counters rather than not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import orjson

from .local import LocalClientStore

log = logging.getLogger("chatgpt_apiserver.clients")

FILE_NAME = "clients.json"
VERSION = 1
INTERVAL = 5.0  # seconds between writes


class StateFile:
    """Keeps a local client store's state in `directory`."""

    def __init__(self, directory: Path, store: LocalClientStore, wall: Callable[[], float] = time.time,
                 interval: float = INTERVAL) -> None:
        self.path = directory / FILE_NAME
        self.store = store
        self.wall = wall
        self.interval = interval
        self._task: Optional[asyncio.Task[None]] = None

    def load(self) -> None:
        """Read the file into the store, if there is one."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as error:
            log.error("cannot read the client state in %s (%s); starting with empty counters", self.path,
                      error.strerror)
            return
        try:
            document = orjson.loads(raw)
            if not isinstance(document, dict) or document.get("version") != VERSION:
                raise ValueError("not a client state file of this version")
            clients = document["clients"]
            elapsed = self.wall() - float(document["saved_at"])
            if not isinstance(clients, dict):
                raise ValueError("no clients")
            self.store.restore(clients, elapsed)
        except (ValueError, KeyError, TypeError) as error:
            aside = self.path.with_name(FILE_NAME + ".unreadable")
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            log.error("the client state in %s is unreadable (%s); moved it to %s and starting with empty counters",
                      self.path, error, aside)
            return
        log.info("client usage and budgets restored from %s (saved %.0f s ago)", self.path, max(0.0, elapsed))

    def _document(self) -> bytes:
        return orjson.dumps({"version": VERSION, "saved_at": self.wall(), "clients": self.store.snapshot()})

    def _write(self, data: bytes) -> None:
        temporary = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def save(self) -> None:
        """Write the file now (at shutdown)."""
        try:
            self._write(self._document())
        except OSError as error:
            log.error("cannot write the client state to %s: %s", self.path, error.strerror)

    async def _save_forever(self) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            if not self.store.dirty:
                continue
            data = self._document()  # taken on the loop, so it is consistent; written off it
            try:
                await loop.run_in_executor(None, self._write, data)
            except OSError as error:
                if not failing:
                    log.error("cannot write the client state to %s: %s (retrying every %.0f s)", self.path,
                              error.strerror, self.interval)
                failing = True
                self.store.dirty = True
                continue
            if failing:
                log.warning("the client state is written to %s again", self.path)
            failing = False

    def start(self) -> None:
        """Make the directory if it is missing, then write every `interval` seconds when something changed."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            log.error("cannot make the state directory %s (%s); client usage and budgets will not survive a "
                      "restart", self.path.parent, error.strerror)
        self._task = asyncio.get_running_loop().create_task(self._save_forever())

    async def close(self) -> None:
        """Stop the periodic writes and write once more."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.save()

