"""systemd's notify protocol (sd_notify), spoken directly over $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Optional

log = logging.getLogger("chatgpt_apiserver.notify")


def notify(message: str, env: Optional[Mapping[str, str]] = None) -> bool:
    """Send `message` (such as READY=1) to systemd; a no-op outside a Type=notify unit."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        log.warning("cannot notify systemd: %s", error.strerror)
        return False
    return True
