"""Rate-limit state shared by several instances in Redis: atomic Lua scripts on Redis's own clock.

Keys (P = redis_prefix, C = controller name; the braces keep one controller's keys in one cluster slot):
  P:{C}:req, P:{C}:tok   hashes {level, ts}: the request and token buckets
  P:{C}:inflight         hash instance -> requests in flight
  P:{C}:cool             cooldown deadline (ms), expiring with it
  P:{C}:off              hash {until, reason}: a disable
  P:{C}:brk              hash {fails, ejections, until, probe}: the circuit breaker
  P:instances:<id>       heartbeat of one gateway instance
Every key expires on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import hiredis

from .redis_scripts import COOL, DISABLE, FAIL, SETTLE, TAKE
from .redis_wire import Address, RespConnection, pack

if TYPE_CHECKING:
    from ..controllers import Controller

log = logging.getLogger("chatgpt_apiserver.shared")

HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_MS = 10_000
POOL_SIZE = 4

# One queued script call: (script, keys, args, future for its reply or None).
Call = tuple[Any, Sequence[Any], Sequence[Any], Optional["asyncio.Future[Any]"]]

@dataclass(frozen=True)
class Taken:
    """The answer of the take script."""

    ok: bool
    wait: float  # seconds until it could succeed; inf when only a release can free a slot
    reason: str


@dataclass(frozen=True)
class _Encoded:
    limits: Any
    take_keys: list[bytes]
    settle_keys: list[bytes]
    instance: bytes
    requests: list[bytes]
    tokens: list[bytes]
    tail: list[bytes]


class RedisUnavailable(Exception):
    """Redis did not answer in time, or at all."""


class SharedState:
    """The Redis side of the scheduler. Every call is one round trip, bounded by `timeout`."""

    def __init__(self, url: str, prefix: str, timeout: float, fallback: str,
                 on_change: Callable[[bool, int], None]) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.timeout = timeout
        self.fallback = fallback
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.available = True
        self.instances = 1
        self._on_change = on_change
        # redis-py carries the control-plane calls (heartbeats, loading scripts); requests use _connection.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=timeout,
                                                        socket_timeout=timeout, socket_connect_timeout=timeout,
                                                        retry_on_timeout=False, health_check_interval=0)
        self._client = aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it
        self._take = self._client.register_script(TAKE)
        self._settle = self._client.register_script(SETTLE)
        self._cool = self._client.register_script(COOL)
        self._disable = self._client.register_script(DISABLE)
        self._fail = self._client.register_script(FAIL)
        self._heartbeat: Optional[asyncio.Task[None]] = None
        self._background: set[asyncio.Task[Any]] = set()
        self._pending: list[Call] = []
        self._address = Address.parse(url)
        self._connection: Optional[RespConnection] = None
        self._encoding: dict[str, _Encoded] = {}
        self._flush_scheduled = False

    def keys(self, name: str, *kinds: str) -> list[str]:
        """The Redis keys of controller `name`."""
        return [f"{self.prefix}:{{{name}}}:{kind}" for kind in kinds]

    async def _run(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One script call, sent in the same pipeline as every other call made in this turn of the loop."""
        future = self._enqueue(script, keys, args, want_reply=True)
        assert future is not None
        return await future

    def _enqueue(self, script: Any, keys: Sequence[Any], args: Sequence[Any],
                 want_reply: bool) -> Optional[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        future = loop.create_future() if want_reply else None
        self._pending.append((script, keys, args, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._flush_scheduled = False
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send(self, batch: list[Call]) -> None:
        """Run a batch of script calls in one round trip (EVALSHA each; scripts are loaded at start)."""
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._pipeline(batch)
            missing = [i for i, reply in enumerate(replies)
                       if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")]
            if missing:  # Redis restarted and forgot the scripts: load them and run those calls again
                async with asyncio.timeout(self.timeout * 2):
                    await self._load_scripts()
                    again = await self._pipeline([batch[i] for i in missing])
                for index, reply in zip(missing, again, strict=True):
                    replies[index] = reply
        except Exception as error:  # any client, connection or timeout error means Redis is away
            self._went_down(error)
            for *_, future in batch:
                if future is not None and not future.done():
                    future.set_exception(RedisUnavailable(type(error).__name__))
            return
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future is None or future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(RedisUnavailable(str(reply)))
            else:
                future.set_result(reply)

    async def _pipeline(self, batch: Sequence[Call]) -> list[Any]:
        """Write every call of the batch at once on the dedicated connection; replies come back in order."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = self._connection = await RespConnection.open(self._address)
        commands = [pack(b"EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _f in batch]
        return list(await asyncio.gather(*connection.send(commands)))

    async def _load_scripts(self) -> None:
        for script in (self._take, self._settle, self._cool, self._disable, self._fail):
            script.sha = await self._client.script_load(script.script)

    def _went_down(self, error: BaseException) -> None:
        if self.available:
            self.available = False
            what = (f"falling back to local buckets at 1/{self.instances} of each limit"
                    if self.fallback == "local" else "refusing requests with 503")
            log.error("Redis is unreachable (%s); %s until it returns", type(error).__name__, what)
            self._on_change(False, self.instances)

    async def start(self) -> None:
        """Load the scripts, announce this instance and keep its heartbeat (and the instance count) fresh."""
        try:
            await asyncio.wait_for(self._load_scripts(), self.timeout * 10)
        except Exception as error:  # start in fallback; the heartbeat notices when Redis is back
            self._went_down(error)
        await self._beat()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat_forever())

    async def close(self) -> None:
        """Stop the heartbeat and drop this instance's key."""
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
        try:
            await asyncio.wait_for(self._client.set(f"{self.prefix}:instances:{self.instance}", 1,
                                                    px=HEARTBEAT_TTL_MS), self.timeout)
            count = 0
            async for _key in self._client.scan_iter(match=f"{self.prefix}:instances:*", count=1000):
                count += 1
        except Exception as error:
            self._went_down(error)
            return
        self.instances = max(1, count)
        if not self.available:
            self.available = True
            log.warning("Redis is reachable again; shared rate-limit state resumes (%d instance(s))",
                        self.instances)
            self._on_change(True, self.instances)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS if self.available else 0.5)
            await self._beat()

    def _encoded(self, controller: Controller) -> _Encoded:
        """Keys and constant arguments of one controller's scripts, encoded once (packing is the hot cost)."""
        cached = self._encoding.get(controller.name)
        if cached is not None and cached.limits is controller.spec.limits:
            return cached
        limits = controller.spec.limits

        def enc(*values: Any) -> list[bytes]:
            return [str(value).encode() for value in values]

        encoded = _Encoded(
            limits=limits,
            take_keys=enc(*self.keys(controller.name, "req", "tok", "inflight", "cool", "off", "brk")),
            settle_keys=enc(*self.keys(controller.name, "req", "tok", "inflight", "brk")),
            instance=self.instance.encode(),
            requests=enc((limits.rpm or 0) / 60_000, limits.request_burst or limits.rpm or 0),
            tokens=enc((limits.tpm or 0) / 60_000, limits.token_burst or limits.tpm or 0),
            tail=enc(limits.max_concurrency or 0, int(1000 * max(5.0, controller.state.breaker.base_ejection))),
        )
        self._encoding[controller.name] = encoded
        return encoded

    async def take(self, controller: Controller, tokens: float) -> Taken:
        """Check and take one request and `tokens` for `controller`, atomically."""
        e = self._encoded(controller)
        reply = await self._run(self._take, e.take_keys,
                                (e.instance, *e.requests, *e.tokens, b"%d" % math.ceil(tokens), *e.tail))
        ok, wait_ms, reason = int(reply[0]), int(reply[1]), reply[2]
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        return Taken(bool(ok), math.inf if wait_ms < 0 else wait_ms / 1000, reason)

    def settle(self, controller: Controller, token_delta: float, succeeded: bool,
               remaining_requests: Optional[float], remaining_tokens: Optional[float]) -> None:
        """Give back the slot and settle tokens, in the background: the client's answer never waits on it."""
        e = self._encoded(controller)
        args = (e.instance, b"%r" % token_delta, *e.tokens, b"1" if succeeded else b"0",
                b"-1" if remaining_requests is None else b"%r" % remaining_requests,
                b"-1" if remaining_tokens is None else b"%r" % remaining_tokens, *e.requests)
        self._spawn(self._settle, e.settle_keys, args)

    def cool(self, controller: Controller, seconds: float) -> None:
        """Share a cooldown with every instance."""
        self._spawn(self._cool, self.keys(controller.name, "cool"), (seconds,))

    def disable(self, controller: Controller, seconds: float, reason: str) -> None:
        """Share a disable (inf: until a reload) with every instance."""
        self._spawn(self._disable, self.keys(controller.name, "off"),
                    (-1 if math.isinf(seconds) else seconds, reason))

    def fail(self, controller: Controller, may_eject: bool) -> None:
        """Count a failure in the shared circuit breaker."""
        policy = controller.state.breaker
        self._spawn(self._fail, self.keys(controller.name, "brk"), (
            policy.failures, "1" if may_eject else "0", int(policy.base_ejection * 1000),
            int(policy.max_ejection * 1000)))

    async def clear_disable(self, controller: Controller) -> None:
        """A reload fixed the key: lift a shared disable."""
        try:
            await asyncio.wait_for(self._client.delete(*self.keys(controller.name, "off")), self.timeout)
        except Exception as error:
            self._went_down(error)

    def _spawn(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """A call whose answer nobody waits for (settling, cooldowns): it rides along in the next batch."""
        if self.available:
            self._enqueue(script, keys, args, want_reply=False)
