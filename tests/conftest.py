"""Shared fixtures: a background event loop, and a stack of fake upstreams plus the gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from .harness import LoopThread, Stack
from .raw_upstream import RawUpstream
from .redis_server import RedisServer


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
