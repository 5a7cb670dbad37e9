"""A bearer token that an outside agent keeps fresh in a file (an Entra ID access token): read again when the
file changes, checked at most once a second on the request path, and at once when the upstream refuses it."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from ..ops.logs import use_secrets
from ..secret import Secret

log = logging.getLogger("chatgpt_apiserver.upstream")

CHECK_INTERVAL = 1.0  # seconds between two looks at the file on the request path
MAX_TOKEN_BYTES = 64 * 1024  # Entra tokens are a few KB; a larger file is not a token
_TOKEN = re.compile(r"[\x21-\x7e]+")  # one header value: visible ASCII, no spaces or line breaks


class TokenFile:
    """The current token from `path`; `token` is None only if the file never held a usable one."""

    def __init__(self, path: Path, owner: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.owner = owner  # the controller's name, for the log
        self._clock = clock
        self._stamp: Optional[tuple[int, int, int]] = None  # (inode, mtime ns, size) of the file last read
        self._checked = -CHECK_INTERVAL
        self._problem = ""  # the last problem logged, so a lasting one is logged once
        self.token: Optional[Secret] = None
        self.changes = 0  # how often a new token was taken up
        self._previous: Optional[Secret] = None  # the token before the current one
        self.refresh(force=True)

    def current(self) -> Optional[Secret]:
        """The token to send now: the file is looked at again once CHECK_INTERVAL has passed."""
        if self._clock() - self._checked >= CHECK_INTERVAL:
            self.refresh()
        return self.token

    def refresh(self, force: bool = False) -> bool:
        """Read the file if it changed (`force`: whatever its stamp says); True if the token is a new one."""
        self._checked = self._clock()
        try:
            info = os.stat(self.path)
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp == self._stamp and not force:
                return False
            if info.st_size > MAX_TOKEN_BYTES:
                return self._refuse(f"{self.path} is {info.st_size} bytes, larger than a token")
            text = self.path.read_text().strip()
        except OSError as exc:
            return self._refuse(f"cannot read {self.path}: {exc.strerror}")
        except UnicodeDecodeError:
            return self._refuse(f"{self.path} is not text")
        if not _TOKEN.fullmatch(text):
            # Empty while an agent rewrites it in place, or not a token at all: keep the last good one.
            return self._refuse(f"{self.path} holds no token (empty, or more than one word)")
        self._stamp, self._problem = stamp, ""
        if self.token is not None and text == self.token.reveal():
            return False
        # Scrubbed from every log line from now on, with the token before it (lines may still name that one);
        # the one before that gives up its place, so that renewals never push configured keys out.
        older, self._previous = self._previous, self.token
        self.token = Secret(text)
        self.changes += 1
        use_secrets((text.encode(),), (older.reveal().encode(),) if older is not None else ())
        if self.changes > 1:
            log.info("controller %s: the bearer token in %s changed; using the new one", self.owner, self.path)
        return True

    def _refuse(self, problem: str) -> bool:
        if problem != self._problem:
            self._problem = problem
            keeping = "keeping the previous token" if self.token is not None else "no token to send yet"
            log.warning("controller %s: %s; %s", self.owner, problem, keeping)
        return False
