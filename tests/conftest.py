"""Shared fixtures: a background event loop, and a stack of fake upstreams plus the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import LoopThread, Stack


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
