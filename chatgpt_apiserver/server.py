"""Running the HTTP server: listen, wait for a signal, drain, close."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from tornado.netutil import bind_sockets
from tornado.web import Application

from .config.check import warnings
from .config.files import ConfigError
from .config.options import OPTIONS
from .config.settings import Settings, parse_settings
from .gateway import Gateway
from .ops.logs import apply_logging, flush_logs, use_secrets
from .ops.notify import notify
from .web.app import make_app
from .web.bodies import Bodies
from .web.connections import ClientServer

log = logging.getLogger("chatgpt_apiserver.server")

# The connections' own cap on bodies, for a request refused before its handler could set the real limits
# (max_body_size, checked on the declared length and on every byte as it arrives).
HARD_BODY_CAP_FACTOR = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # drain, then exit
RELOAD_SIGNAL = signal.SIGHUP  # re-read the config
# The request path frees what it allocates by reference counting, yet at CPython's default (700 net new
# containers) the cyclic collector ran every ~40 streams at c=32, ~3 % of the CPU. At 2,000 it took a fifth
# of that (10,000 saved little more, and would leave cyclic garbage, which can hold a request body, around
# five times longer).
GC_GEN0_THRESHOLD = 2_000


@dataclass
class Running:
    """A listening server and the gateway behind it."""

    server: ClientServer
    gateway: Gateway
    sockets: list[socket.socket]

    @property
    def addresses(self) -> list[str]:
        """The addresses actually bound (what a reload's security check is held to)."""
        return [str(sock.getsockname()[0]) for sock in self.sockets]

    @property
    def port(self) -> int:
        """The port actually bound (useful when the setting is 0)."""
        return int(self.sockets[0].getsockname()[1])

    async def stop(self, grace: Optional[float] = None) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds, then close everything."""
        gateway = self.gateway
        gateway.draining = True  # from here every answer says Connection: close
        self.server.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (gateway.settings.shutdown_timeout if grace is None else grace)
        idle = await gateway.wait_idle(deadline - loop.time())
        while idle and not self.server.quiet() and loop.time() < deadline:  # a request whose head is arriving
            await asyncio.sleep(0.05)
            if gateway.in_flight:
                idle = await gateway.wait_idle(max(0.05, deadline - loop.time()))
        if not idle:
            log.warning("shutdown timeout: ending %d request(s) still in flight", gateway.in_flight)
            gateway.abort_all("the server is shutting down")
            await gateway.wait_idle(5.0)
        await self.server.close_all_connections()
        await gateway.close()


async def start_server(settings: Settings, gateway: Optional[Gateway] = None) -> Running:
    """Build the gateway and application and start listening."""
    gateway = gateway or Gateway.from_settings(settings)
    await gateway.start()
    bodies = Bodies(lambda: gateway.settings.max_buffered_body_bytes)
    server = ClientServer(
        make_app(gateway, bodies),
        max_body_size=settings.max_body_size * HARD_BODY_CAP_FACTOR,
        max_header_size=settings.max_header_size,
        timeouts=lambda: (gateway.settings.client_idle_timeout, gateway.settings.client_body_timeout),
        on_slow_body=bodies.timed_out,
    )
    sockets = bind_sockets(settings.port, settings.host, reuse_port=settings.reuse_port, backlog=4096)
    server.add_sockets(sockets)
    running = Running(server, gateway, sockets)
    use_secrets(gateway.secrets)
    log.info("listening on %s:%d with %d controller(s): %s", settings.host, running.port,
             len(gateway.controllers), ", ".join(c.name for c in gateway.controllers))
    return running


def settle_heap() -> None:
    """At start-up: collect, then freeze what is alive (the config, the schemas, the gateway) out of the
    cyclic collector's scans, and let it run less often (`GC_GEN0_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def release_heap() -> None:
    """After a reload: unfreeze, so that the config it replaced can be collected even from reference cycles,
    and collect. Nothing is frozen again: what is alive now includes retiring controllers and requests in
    flight, which, once frozen, would never be collected."""
    gc.unfreeze()
    gc.collect()


async def reload(running: Running, argv: Sequence[str]) -> bool:
    """SIGHUP: re-read and validate the config; swap it in if valid, else keep serving the old one."""
    notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    try:
        try:
            settings, _check = parse_settings(argv, listening=running.addresses)
        except ConfigError as error:
            for problem in error.problems:  # one line each: a log line never spans lines
                log.error("reload failed: %s", problem)
            log.error("reload failed; still serving the previous config")
            return False
        except SystemExit:
            log.error("reload failed: the command line no longer parses; still serving the previous config")
            return False
        old = running.gateway.settings
        for option in OPTIONS:
            if option.restart and getattr(settings, option.dest) != getattr(old, option.dest):
                before, after = getattr(old, option.dest), getattr(settings, option.dest)
                change = "" if option.secret else f" from {before} to {after}"
                log.warning("reload: %s changed%s; that takes a restart, until then the old value stays",
                            option.key, change)
        await running.gateway.reload(settings)
        apply_server_settings(running, settings)
        for warning in warnings(settings):
            log.warning("reload: %s", warning)
        return True
    finally:
        notify("READY=1")


def apply_server_settings(running: Running, settings: Settings) -> None:
    """A reload: the settings the server and the logging hold take effect (the gateway applies its own)."""
    app = running.server.app
    if isinstance(app, Application):
        app.settings["cors_origins"] = settings.cors_origins
    running.server.max_body_size = settings.max_body_size * HARD_BODY_CAP_FACTOR
    running.server.max_header_size = settings.max_header_size
    apply_logging(settings.log_level, settings.log_format)
    use_secrets(running.gateway.secrets)  # a new key is scrubbed from the log from now on


async def serve(settings: Settings, argv: Sequence[str] = ()) -> int:
    """Serve until SIGTERM or SIGINT (SIGHUP reloads), then drain; return the exit status."""
    running = await start_server(settings)
    settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def reloaded(task: asyncio.Task[bool]) -> None:
        reloads.discard(task)
        if not task.cancelled() and task.exception() is None and task.result():
            release_heap()

    def on_hangup() -> None:
        task = loop.create_task(reload(running, argv))
        reloads.add(task)
        task.add_done_callback(reloaded)

    loop.add_signal_handler(RELOAD_SIGNAL, on_hangup)
    # Only now: systemd may send SIGHUP (systemctl reload) the moment it reads READY=1.
    notify(f"READY=1\nSTATUS=serving on {settings.host}:{running.port}\nMAINPID={os.getpid()}")
    flusher = loop.create_task(_flush_logs_forever())
    await stop.wait()
    notify("STOPPING=1")
    log.info("stopping: draining %d in-flight request(s)", running.gateway.in_flight)
    await running.stop()
    log.info("stopped")
    flusher.cancel()
    flush_logs()
    return 0


async def _flush_logs_forever(interval: float = 0.25) -> None:
    """Buffered log lines reach their writer within `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        flush_logs()
