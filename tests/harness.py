"""Runs the gateway and fake upstreams on a uvloop event loop in a background thread.

Tests then use real clients (the official openai SDK, raw HTTP) from the test thread over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Optional, TypeVar

import orjson
import uvloop

from chatgpt_apiserver.config.settings import Settings, parse_settings
from chatgpt_apiserver.server import Running, start_server

from .fake_upstream import FakeUpstream
from .raw_upstream import RawUpstream

T = TypeVar("T")


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a plain function on the loop thread."""
        async def wrapper() -> Any:
            return fn(*args)
        return self.run(wrapper())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Stack:
    """Fake upstreams plus one gateway, all on the loop thread."""

    def __init__(self, loop: LoopThread, tmp_path: Path) -> None:
        self.loop = loop
        self.tmp_path = tmp_path
        self.fakes: list[FakeUpstream] = []
        self.raws: list[RawUpstream] = []
        self.running: Optional[Running] = None

    def fake(self, name: str = "fake", model_ids: tuple[str, ...] = ("fake-model",)) -> FakeUpstream:
        """Start a fake upstream."""
        fake = FakeUpstream(name, model_ids)
        self.loop.call(fake.start)
        self.fakes.append(fake)
        return fake

    def raw(self) -> RawUpstream:
        """Start a raw-socket fake upstream that sends exact bytes on cue."""
        raw = RawUpstream()
        self.loop.run(raw.start())
        self.raws.append(raw)
        return raw

    def settings(self, config: dict[str, Any], *args: str, env: Optional[dict[str, str]] = None) -> Settings:
        """Write `config` to a file and parse it the way the CLI does."""
        path = self.tmp_path / "chatgpt-apiserver.json"
        path.write_bytes(orjson.dumps(config))
        settings, _check = parse_settings(["--config-file", str(path), "--port", "0", *args], env or {})
        return settings

    def gateway(self, config: dict[str, Any], *args: str, env: Optional[dict[str, str]] = None) -> Stack:
        """Start the gateway for `config` (controllers usually point at fakes)."""
        settings = self.settings(config, *args, env=env)
        self.running = self.loop.run(start_server(settings))
        return self

    @property
    def port(self) -> int:
        assert self.running is not None
        return self.running.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def request(self, method: str, path: str, body: Any = None, headers: Optional[dict[str, str]] = None,
                timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        """One raw HTTP request to the gateway: (status, lower-cased headers, body)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, type(None))) else orjson.dumps(body)
        connection.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        response = connection.getresponse()
        result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        connection.close()
        return result

    def close(self) -> None:
        if self.running is not None:
            self.loop.run(self.running.stop(grace=1.0))
        for fake in self.fakes:
            self.loop.run(fake.stop())
        for raw in self.raws:
            self.loop.run(raw.stop())


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send exact bytes, read one answer: (status, lower-cased headers, body). The send may be cut short."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        # The server may answer and close before taking all of it: the answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        sock.close()


def openai_controller(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    """A config entry for an openai controller pointing at `fake`."""
    config = {"api_key": f"sk-test-{fake.name}-0123456789abcdef", "base_url": fake.base_url}
    config.update(extra.pop("config", {}))
    return {"type": "openai", "name": fake.name, "config": config, **extra}


def raw_controller(raw: RawUpstream, name: str = "raw", **extra: Any) -> dict[str, Any]:
    """A config entry for an openai controller pointing at a raw-socket fake."""
    return {"type": "openai", "name": name, "config": {"api_key": f"sk-test-{name}-0123456789abcdef",
                                                       "base_url": raw.base_url}, **extra}
