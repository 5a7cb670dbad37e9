"""Shared fixtures: a background event loop, and a stack of fake upstreams plus the gateway."""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from chatgpt_apiserver.web.connections import ClientServer

from .certificates import make_certificates
from .fake_upstream import FakeUpstream
from .harness import LoopThread, Stack
from .raw_upstream import RawUpstream
from .redis_server import RedisServer


@pytest.fixture(autouse=True)
def _close_openai_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every official client a test makes is closed after it: a pooled socket the garbage collector finds
    later would be an unclosed-socket warning (an error here) in whichever test runs then."""
    import openai

    made: list[Any] = []
    original = openai.OpenAI.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(openai.OpenAI, "__init__", init)
    yield
    for client in made:
        client.close()


@pytest.fixture(autouse=True)
def _close_leftover_event_loop() -> Iterator[None]:
    """Close the event loop a test leaves behind as this thread's current one. Tornado's `make_current` (in
    pytest-tornado's `io_loop`) keeps the loop `asyncio.get_event_loop()` creates and restores it afterwards,
    unclosed; the garbage collector would find it in whichever test runs then, as an unclosed-loop warning."""
    yield
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return  # none is current
    if not loop.is_running() and not loop.is_closed():
        loop.close()
        policy.set_event_loop(None)


@pytest.fixture
def http_server(request: pytest.FixtureRequest, io_loop: Any, _unused_port: tuple[socket.socket, int]
                ) -> Iterator[ClientServer]:
    """pytest-tornado's server fixture (for a test module's `app`), serving through the gateway's own client
    connections (web/connections.py) rather than Tornado's HTTPServer."""
    app = request.getfixturevalue(request.config.option.app_fixture)

    async def start() -> ClientServer:
        return ClientServer(app, max_header_size=65536, max_body_size=64 * 1024 * 1024,
                            timeouts=lambda: (60.0, 60.0))

    server: ClientServer = io_loop.run_sync(start)
    server.add_sockets([_unused_port[0]])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def stack(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Stack]:
    built = Stack(loop_thread, tmp_path)
    yield built
    built.close()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for a module's many small cases (each uses keys of its own)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def tls_upstream(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """A fake upstream on HTTPS with a certificate from a throwaway CA, which the gateway is made to trust."""
    ca, cert, key = make_certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    fake = FakeUpstream("tls")
    stack.loop.call(fake.start, context)
    stack.fakes.append(fake)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the gateway's CA store: the test CA
    return fake


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis for one test (tests may stop and restart it)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def sdk() -> Iterator[Callable[..., Any]]:
    """Official SDK clients for fake upstreams (sdk_checks.client_for), closed after the test.

    Closing matters: a test's exception info can keep a client in a reference cycle, and a pooled socket
    that the garbage collector finalizes before its client is an unclosed-socket warning (an error here).
    """
    from .sdk_checks import client_for  # the openai SDK loads only for the tests that use it
    clients: list[Any] = []

    def make(*args: Any, **options: Any) -> Any:
        clients.append(client_for(*args, **options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def api(stack: Stack) -> Iterator[Callable[..., Any]]:
    """Official SDK clients of the gateway: api(key, port=None, **options), closed after the test."""
    import openai
    clients: list[Any] = []

    def make(key: str, port: Optional[int] = None, **options: Any) -> Any:
        base = f"http://127.0.0.1:{port or stack.port}/v1"
        clients.append(openai.OpenAI(base_url=base, api_key=key, **{"max_retries": 0, "timeout": 30, **options}))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def raw(loop_thread: LoopThread) -> Iterator[RawUpstream]:
    """A raw-socket fake upstream that sends exact bytes on cue."""
    upstream = RawUpstream()
    loop_thread.run(upstream.start())
    yield upstream
    loop_thread.run(upstream.stop())


@pytest.fixture
def gateway_client(stack: Stack) -> Iterator[Callable[[], Any]]:
    """The official SDK's plain `OpenAI` client for the stack's gateway (once it runs), closed after the test."""
    import openai

    made: list[openai.OpenAI] = []

    def get() -> openai.OpenAI:
        if not made:
            made.append(openai.OpenAI(base_url=stack.base_url, api_key="client-key", max_retries=0, timeout=30))
        return made[0]

    yield get
    for client in made:
        client.close()
