"""The Redis connection behind the Redis store: pipelined script calls, heartbeats, and up/down transitions.

Hot-path script calls go out on one dedicated connection, parsed by hiredis; the calls made in one turn
of the event loop travel in one pipeline. redis-py carries the control plane (loading scripts,
heartbeats, counting instances). No call waits longer than `timeout`: past it Redis counts as down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Optional

import hiredis

from .redis_scripts import SCRIPTS
from .redis_wire import Address, Packed, RespConnection, pack
from .store import StoreUnavailable

log = logging.getLogger("chatgpt_apiserver.state")

HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_MS = 10_000
POOL_SIZE = 4

Reply = Callable[[Any], None]
# One queued script call: (script name, keys, args, future for its reply or None, callback or None).
Queued = tuple[str, Sequence[Any], Sequence[Any], Optional["asyncio.Future[Any]"], Optional[Reply]]


class RedisLink:
    """Script calls to one Redis, batched per loop turn; tells its owner when Redis goes and comes back."""

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.timeout = timeout
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.available = True
        self.instances = 1
        self.on_change: Callable[[bool, int], None] = lambda up, n: None
        self.on_beat: Callable[[], Awaitable[None]] = _nothing
        # Other users of the link (the client store) hear of the same transitions and heartbeats.
        self.watchers: list[Callable[[bool, int], None]] = []
        self.beats: list[Callable[[], Awaitable[None]]] = []
        # Redis forgot everything between two heartbeats (a fast restart, a flush): each user puts back its part.
        self.on_lost: list[Callable[[], None]] = []
        self._announced = False  # this instance's key was set once: from then on, a heartbeat finds it
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=timeout,
                                                        socket_timeout=timeout, socket_connect_timeout=timeout,
                                                        retry_on_timeout=False, health_check_interval=0)
        self._client = aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it
        self._scripts = {name: self._client.register_script(text) for name, text in SCRIPTS.items()}
        self._shas = {name: script.sha.encode() for name, script in self._scripts.items()}
        self._heartbeat: Optional[asyncio.Task[None]] = None
        self._background: set[asyncio.Task[Any]] = set()
        self._pending: list[Queued] = []
        self._address = Address.parse(url)
        self._connection: Optional[RespConnection] = None
        self._opening = asyncio.Lock()
        self._flush_scheduled = False
        self._in_tasks = 0  # batches handed to a task (`_send_in_turn`) and not yet answered
        self._closing = False

    def add_scripts(self, scripts: dict[str, str]) -> None:
        """Scripts of another user of the link (call before `start`, which loads every script)."""
        for name, text in scripts.items():
            script = self._scripts[name] = self._client.register_script(text)
            self._shas[name] = script.sha.encode()

    def key(self, name: str, kind: str) -> bytes:
        """The Redis key of one part of controller `name`'s state."""
        return f"{self.prefix}:{{{name}}}:{kind}".encode()

    async def call(self, script: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One script call and its reply; raises StoreUnavailable when Redis does not answer in time. `keys`
        and runs of `args` may come as `Packed` (encoded once by their owner)."""
        if not self.available:
            raise StoreUnavailable("Redis is unreachable")
        future = asyncio.get_running_loop().create_future()
        self._enqueue((script, keys, args, future, None))
        return await future

    def send(self, script: str, keys: Sequence[Any], args: Sequence[Any], on_reply: Optional[Reply] = None) -> None:
        """A call nobody waits for (settling, outcomes); it rides along in the next batch."""
        if self.available:
            self._enqueue((script, keys, args, None, on_reply))

    def _enqueue(self, call: Queued) -> None:
        self._pending.append(call)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._flush_scheduled = False
        connection = self._connection
        if connection is None or connection.closed or self._in_tasks:
            # The connection opens first; or batches sent that way are still on their way, and this one must
            # not pass them.
            self._send_in_turn(batch)
            return
        try:
            commands = self._commands(batch)
        except Exception as error:  # as from a task: the calls fail at once, with what went wrong
            self._failed(batch, error)
            return
        calls = _Batch(self, batch)
        try:
            connection.write(commands, calls)
        except Exception as error:
            calls.fail(error)

    def _send_in_turn(self, batch: list[Queued], reload: bool = False) -> None:
        """Send `batch` from a task; batches flushed meanwhile follow it from tasks too, so none passes it."""
        task = asyncio.get_running_loop().create_task(self._send(batch, reload))
        self._in_tasks += 1
        self._background.add(task)
        task.add_done_callback(self._sent_in_turn)  # (cancelled before it ran, too)

    def _sent_in_turn(self, task: asyncio.Task[None]) -> None:
        self._in_tasks -= 1
        self._background.discard(task)

    async def _send(self, batch: list[Queued], reload: bool = False) -> None:
        """Run a batch of script calls in one round trip from a task, opening the connection first if need be
        (EVALSHA each; scripts are loaded at start, and first with `reload`: calls Redis had forgotten the
        scripts of, run once again)."""
        try:
            if reload:
                async with asyncio.timeout(self.timeout * 2):
                    await self._load_scripts()
            async with asyncio.timeout(self.timeout):
                replies = await self._pipeline(batch)
        except Exception as error:  # any client, connection or timeout error means Redis is away
            self._failed(batch, error)
            return
        missing = []
        for call, reply in zip(batch, replies, strict=True):
            if not reload and _forgotten(reply):
                missing.append(call)
            else:
                self._deliver(call, reply)
        if missing:
            self._send_in_turn(missing, reload=True)

    def _deliver(self, call: Queued, reply: Any) -> None:
        """A call's reply, to whoever waits for it."""
        _script, _keys, _args, future, callback = call
        if isinstance(reply, Exception):
            log.error("a Redis script failed: %s", reply)
            if future is not None and not future.done():
                future.set_exception(StoreUnavailable(str(reply)))
        elif future is not None:
            if not future.done():
                future.set_result(reply)
        elif callback is not None:
            try:
                callback(reply)
            except Exception:  # (run from the connection's reads: one failing must not fail the others)
                log.exception("handling a Redis reply failed")

    def _failed(self, batch: Sequence[Queued], error: BaseException) -> None:
        """Redis did not answer these calls: it counts as down, and whoever waits hears so."""
        self.went_down(error)
        for _script, _keys, _args, future, _callback in batch:
            if future is not None and not future.done():
                future.set_exception(StoreUnavailable(type(error).__name__))

    def _commands(self, batch: Sequence[Queued]) -> list[bytes]:
        commands = []
        for script, keys, args, _f, _c in batch:
            packed = keys if keys.__class__ is Packed else Packed(*keys)
            commands.append(pack(b"EVALSHA", self._shas[script], packed.arguments, packed, *args))
        return commands

    async def _pipeline(self, batch: Sequence[Queued]) -> list[Any]:
        """Write every call of the batch at once on the dedicated connection; replies come back in order."""
        connection = self._connection
        if connection is None or connection.closed:
            async with self._opening:  # one connection, so batches keep their order
                connection = self._connection
                if connection is None or connection.closed:
                    connection = self._connection = await RespConnection.open(self._address)
        return list(await asyncio.gather(*connection.send(self._commands(batch))))

    async def _load_scripts(self) -> None:
        for name, script in self._scripts.items():
            sha = await self._client.script_load(script.script)
            self._shas[name] = sha.encode() if isinstance(sha, str) else sha

    def went_down(self, error: BaseException) -> None:
        """Note that Redis stopped answering (logged once per transition; not while the link closes)."""
        if self.available and not self._closing:
            self.available = False
            log.error("Redis is unreachable (%s)", type(error).__name__)
            self.on_change(False, self.instances)
            for watcher in self.watchers:
                watcher(False, self.instances)

    async def start(self) -> None:
        """Load the scripts, announce this instance and keep its heartbeat (and the instance count) fresh."""
        try:
            await asyncio.wait_for(self._load_scripts(), self.timeout * 10)
        except Exception as error:  # start in fallback; the heartbeat notices when Redis is back
            self.went_down(error)
        await self._beat()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat_forever())

    async def close(self) -> None:
        """Stop the heartbeat and drop this instance's key."""
        self._closing = True  # calls cut short from here on are not an outage
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in list(self._background):
            task.cancel()
        with contextlib.suppress(Exception):  # best effort on the way out
            await asyncio.wait_for(self._client.delete(f"{self.prefix}:instances:{self.instance}"), self.timeout)
        if self._connection is not None:
            self._connection.close()
        await self._client.aclose()

    async def _beat(self) -> None:
        key = f"{self.prefix}:instances:{self.instance}"
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.exists(key)
                pipe.set(key, 1, px=HEARTBEAT_TTL_MS)
                existed, _ = await asyncio.wait_for(pipe.execute(), self.timeout)
            count = 0
            async for _key in self._client.scan_iter(match=f"{self.prefix}:instances:*", count=1000):
                count += 1
        except Exception as error:
            self.went_down(error)
            return
        self.instances = max(1, count)
        if not self.available:
            self.available = True
            log.warning("Redis is reachable again; shared controller state resumes (%d instance(s))",
                        self.instances)
            self.on_change(True, self.instances)
            for watcher in self.watchers:
                watcher(True, self.instances)
        elif self._announced and not existed:
            # The key a heartbeat renews long before it expires is gone: Redis restarted, empty, between two
            # heartbeats (too fast for any call to fail), or was flushed.
            log.warning("Redis lost the shared state since the last heartbeat (restarted or flushed); this "
                        "instance puts back its slots and the lowest levels it saw")
            for lost in self.on_lost:
                lost()
        self._announced = True
        await self.on_beat()
        for beat in self.beats:
            await beat()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS if self.available else 0.5)
            await self._beat()


async def _nothing() -> None:
    return None


def _forgotten(reply: Any) -> bool:
    """Redis answered that it does not know the script (restarted, or its scripts were flushed)."""
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


class _Batch:
    """The calls of one batch written on the connection without a task: each reply goes to its caller as it
    arrives, and the calls still unanswered when the link's timeout runs out fail, Redis then counting as down
    (their late replies are dropped). Calls Redis has no script for run again from a task, once reloaded."""

    __slots__ = ("_calls", "_left", "_link", "_missing", "_timer")

    def __init__(self, link: RedisLink, calls: list[Queued]) -> None:
        self._link = link
        self._calls: Optional[list[Optional[Queued]]] = list(calls)
        self._left = len(calls)
        self._missing: list[Queued] = []
        self._timer = asyncio.get_running_loop().call_later(link.timeout, self._expire)

    def received(self, index: int, reply: Any) -> None:
        calls = self._calls
        if calls is None:
            return  # too late: the batch failed already
        call = calls[index]
        assert call is not None
        calls[index] = None
        self._left -= 1
        if _forgotten(reply):
            self._missing.append(call)
        else:
            self._link._deliver(call, reply)
        if not self._left:
            self._stop()
            if self._missing:
                self._link._send_in_turn(self._missing, reload=True)

    def lost(self, index: int, error: ConnectionError) -> None:
        self.fail(error)

    def _expire(self) -> None:
        self.fail(TimeoutError())

    def fail(self, error: BaseException) -> None:
        """Every call still unanswered fails (Redis counts as down), and late replies are dropped."""
        calls = self._calls
        if calls is None:
            return
        self._stop()
        self._link._failed([call for call in calls if call is not None] + self._missing, error)

    def _stop(self) -> None:
        """Stop the timer; the calls are no longer this batch's to answer."""
        self._timer.cancel()
        self._calls = None
