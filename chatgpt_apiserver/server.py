"""Running the HTTP server: listen, wait for a signal, drain, close."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import Optional

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .app import make_app
from .config import Settings
from .gateway import Gateway
from .notify import notify

log = logging.getLogger("chatgpt_apiserver.server")

# Tornado's own cap on bodies; the configurable limit (max_body_size) answers 413 below it.
HARD_BODY_CAP_FACTOR = 2


@dataclass
class Running:
    """A listening server and the gateway behind it."""

    server: HTTPServer
    gateway: Gateway
    sockets: list[socket.socket]

    @property
    def port(self) -> int:
        """The port actually bound (useful when the setting is 0)."""
        return int(self.sockets[0].getsockname()[1])

    async def stop(self, grace: Optional[float] = None) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds, then close everything."""
        gateway = self.gateway
        gateway.draining = True
        self.server.stop()
        await gateway.wait_idle(gateway.settings.shutdown_timeout if grace is None else grace)
        await self.server.close_all_connections()
        await gateway.close()


async def start_server(settings: Settings, gateway: Optional[Gateway] = None) -> Running:
    """Build the gateway and application and start listening."""
    gateway = gateway or Gateway.from_settings(settings)
    await gateway.start()
    server = HTTPServer(
        make_app(gateway),
        max_body_size=settings.max_body_size * HARD_BODY_CAP_FACTOR,
        idle_connection_timeout=3600,
    )
    sockets = bind_sockets(settings.port, settings.host)
    server.add_sockets(sockets)
    running = Running(server, gateway, sockets)
    log.info("listening on %s:%d with %d controller(s): %s", settings.host, running.port,
             len(gateway.controllers), ", ".join(c.name for c in gateway.controllers))
    return running


async def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then drain; return the exit status."""
    running = await start_server(settings)
    notify(f"READY=1\nSTATUS=serving on {settings.host}:{running.port}\nMAINPID={os.getpid()}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    notify("STOPPING=1")
    log.info("stopping: draining %d in-flight request(s)", running.gateway.in_flight)
    await running.stop()
    log.info("stopped")
    return 0
