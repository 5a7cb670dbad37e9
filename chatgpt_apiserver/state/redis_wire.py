"""A minimal pipelined Redis connection for the hot path: packed commands out, hiredis-parsed replies in."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Optional, Protocol
from urllib.parse import unquote, urlsplit

import hiredis


def bulk(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class Packed(bytes):
    """A run of arguments encoded once (keys, limits): `pack` sends it as it is, as `arguments` arguments."""

    arguments: int

    def __new__(cls, *parts: Any) -> Packed:
        packed = super().__new__(cls, b"".join(bulk(part) for part in parts))
        packed.arguments = len(parts)
        return packed


def pack(*parts: Any) -> bytes:
    """One command in Redis's wire format (RESP); a `Packed` part stands for the arguments it holds."""
    out: list[bytes] = []
    count = 0
    for part in parts:
        if part.__class__ is Packed:
            out.append(part)
            count += part.arguments
        else:
            out.append(bulk(part))
            count += 1
    return b"*%d\r\n" % count + b"".join(out)


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    password: Optional[str]
    username: Optional[str]
    db: int

    @classmethod
    def parse(cls, url: str) -> Address:
        parts = urlsplit(url)
        db = parts.path.strip("/")
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, unquote(parts.password or "") or None,
                   unquote(parts.username or "") or None, int(db) if db.isdigit() else 0)


class Receiver(Protocol):
    """Who gets the replies of commands written together: by their index among them."""

    def received(self, index: int, reply: Any) -> None: ...

    def lost(self, index: int, error: ConnectionError) -> None: ...


class Futures:
    """Replies into one future per command (the connection's set-up, and batches sent from a task)."""

    __slots__ = ("futures",)

    def __init__(self, futures: list[asyncio.Future[Any]]) -> None:
        self.futures = futures

    def received(self, index: int, reply: Any) -> None:
        future = self.futures[index]
        if not future.done():
            future.set_result(reply)

    def lost(self, index: int, error: ConnectionError) -> None:
        future = self.futures[index]
        if not future.done():
            future.set_exception(error)


class RespConnection(asyncio.Protocol):
    """The hot path's own pipelined connection to Redis: packed commands out, hiredis-parsed replies in, each
    handed to the receiver its command was written with, in order."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[Receiver, int]] = deque()
        self.closed = False

    @classmethod
    async def open(cls, address: Address) -> RespConnection:
        """Connect, then authenticate and select the database when the URL says so."""
        loop = asyncio.get_running_loop()
        _transport, connection = await loop.create_connection(cls, address.host, address.port)
        setup = []
        if address.password:
            setup.append(pack(b"AUTH", *([address.username] if address.username else []), address.password))
        if address.db:
            setup.append(pack(b"SELECT", address.db))
        for reply in await asyncio.gather(*connection.send(setup)) if setup else ():
            if isinstance(reply, hiredis.ReplyError):
                connection.close()
                raise ConnectionError(f"Redis refused the connection set-up: {reply}")
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            receiver, index = waiting.popleft()
            receiver.received(index, reply)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        error = ConnectionError("the Redis connection was lost")
        while self.waiting:
            receiver, index = self.waiting.popleft()
            receiver.lost(index, error)

    def write(self, commands: list[bytes], receiver: Receiver) -> None:
        """Write the commands in one go; their replies go to `receiver` as they come."""
        if self.closed or self.transport is None:
            raise ConnectionError("the Redis connection is closed")
        self.waiting.extend(zip(repeat(receiver), range(len(commands))))
        self.transport.write(b"".join(commands))

    def send(self, commands: list[bytes]) -> list[asyncio.Future[Any]]:
        """Write the commands in one go; one future per reply."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.write(commands, Futures(futures))
        return futures

    def close(self) -> None:
        """Hang up (any reply still owed fails)."""
        if self.transport is not None:
            self.transport.close()
