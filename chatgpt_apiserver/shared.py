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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import unquote, urlsplit

import hiredis

if TYPE_CHECKING:
    from .controllers import Controller

log = logging.getLogger("chatgpt_apiserver.shared")

KEY_TTL_MS = 3_600_000
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_MS = 10_000
POOL_SIZE = 64

# One queued script call: (script, keys, args, future for its reply or None).
Call = tuple[Any, Sequence[Any], Sequence[Any], Optional["asyncio.Future[Any]"]]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_LEVEL = """
local function level(key, rate, cap)
  local h = redis.call('HMGET', key, 'level', 'ts')
  local lv, ts = tonumber(h[1]), tonumber(h[2])
  if not lv then return cap end
  return math.min(cap, lv + math.max(0, now - ts) * rate)
end
"""

# KEYS: req tok inflight cool off brk
# ARGV: instance req_rate_per_ms req_cap tok_rate_per_ms tok_cap tokens max_concurrency probe_ttl_ms
TAKE = _NOW + _LEVEL + """
local off = tonumber(redis.call('HGET', KEYS[5], 'until') or '0')
if off > now then return {0, off - now, 'disabled'} end
local cool = tonumber(redis.call('GET', KEYS[4]) or '0')
if cool > now then return {0, cool - now, 'cooling'} end
local brk = redis.call('HMGET', KEYS[6], 'until', 'ejections', 'probe')
local ejected, ejections, probe = tonumber(brk[1] or '0'), tonumber(brk[2] or '0'), tonumber(brk[3] or '0')
if ejected > now then return {0, ejected - now, 'ejected'} end
if ejections > 0 and probe > now then return {0, probe - now, 'probing'} end
local maxc = tonumber(ARGV[7])
if maxc > 0 then
  local total = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[3])) do total = total + tonumber(v) end
  if total >= maxc then return {0, -1, 'busy'} end
end
local rcap, tcap = tonumber(ARGV[3]), tonumber(ARGV[5])
local rlv, tlv = 0, 0
if rcap > 0 then
  rlv = level(KEYS[1], tonumber(ARGV[2]), rcap)
  if rlv < 1 then return {0, math.ceil((1 - rlv) / tonumber(ARGV[2])), 'requests'} end
end
local want = tonumber(ARGV[6])
if tcap > 0 then
  tlv = level(KEYS[2], tonumber(ARGV[4]), tcap)
  local need = math.min(want, tcap)
  if tlv < need then return {0, math.ceil((need - tlv) / tonumber(ARGV[4])), 'tokens'} end
end
if rcap > 0 then
  redis.call('HSET', KEYS[1], 'level', rlv - 1, 'ts', now)
  redis.call('PEXPIRE', KEYS[1], @TTL@)
end
if tcap > 0 then
  redis.call('HSET', KEYS[2], 'level', tlv - want, 'ts', now)
  redis.call('PEXPIRE', KEYS[2], @TTL@)
end
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[3], @TTL@)
if ejections > 0 then redis.call('HSET', KEYS[6], 'probe', now + tonumber(ARGV[8])) end
return {1, math.floor(rlv - 1), 'ok'}
""".replace("@TTL@", str(KEY_TTL_MS))

# KEYS: req tok inflight brk
# ARGV: instance token_delta tok_rate tok_cap succeeded remaining_req remaining_tok req_rate req_cap
SETTLE = _NOW + _LEVEL + """
local left = redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
if left <= 0 then redis.call('HDEL', KEYS[3], ARGV[1]) end
local tcap = tonumber(ARGV[4])
if tcap > 0 then
  local lv = level(KEYS[2], tonumber(ARGV[3]), tcap)
  lv = math.min(tcap, lv + tonumber(ARGV[2]))
  local remaining = tonumber(ARGV[7])
  if remaining >= 0 and remaining < lv then lv = remaining end
  redis.call('HSET', KEYS[2], 'level', lv, 'ts', now)
  redis.call('PEXPIRE', KEYS[2], @TTL@)
end
local rcap = tonumber(ARGV[9])
local rrem = tonumber(ARGV[6])
if rcap > 0 and rrem >= 0 then
  local lv = level(KEYS[1], tonumber(ARGV[8]), rcap)
  if rrem < lv then redis.call('HSET', KEYS[1], 'level', rrem, 'ts', now) end
end
if ARGV[5] == '1' then redis.call('DEL', KEYS[4]) end
return left
""".replace("@TTL@", str(KEY_TTL_MS))

# KEYS: cool   ARGV: seconds   -- a later deadline extends a cooldown, an earlier one never shortens it
COOL = _NOW + """
local untilms = now + math.floor(tonumber(ARGV[1]) * 1000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untilms > cur then redis.call('SET', KEYS[1], untilms, 'PX', untilms - now) end
return math.max(untilms, cur) - now
"""

# KEYS: off   ARGV: seconds (-1: until a reload) reason
DISABLE = _NOW + """
local secs = tonumber(ARGV[1])
local untilms = secs < 0 and (now + @FOREVER@) or (now + math.floor(secs * 1000))
local cur = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if untilms > cur then
  redis.call('HSET', KEYS[1], 'until', untilms, 'reason', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], untilms - now)
end
return 1
""".replace("@FOREVER@", str(10 * 365 * 86_400_000))

# KEYS: brk   ARGV: threshold may_eject base_ms max_ms
FAIL = _NOW + """
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
local ejections = tonumber(redis.call('HGET', KEYS[1], 'ejections') or '0')
local probing = ejections > 0 and tonumber(redis.call('HGET', KEYS[1], 'probe') or '0') > 0
redis.call('PEXPIRE', KEYS[1], @TTL@)
if (fails < tonumber(ARGV[1]) and not probing) or ARGV[2] ~= '1' then return 0 end
local duration = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ ejections)
redis.call('HSET', KEYS[1], 'ejections', ejections + 1, 'until', now + duration, 'probe', 0)
return duration
""".replace("@TTL@", str(KEY_TTL_MS))


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


def _bulk(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack(*parts: Any) -> bytes:
    """One command in Redis's wire format (RESP)."""
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(part) for part in parts)


@dataclass(frozen=True)
class _Address:
    host: str
    port: int
    password: Optional[str]
    username: Optional[str]
    db: int

    @classmethod
    def parse(cls, url: str) -> _Address:
        parts = urlsplit(url)
        db = parts.path.strip("/")
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, unquote(parts.password or "") or None,
                   unquote(parts.username or "") or None, int(db) if db.isdigit() else 0)


class _RespConnection(asyncio.Protocol):
    """The hot path's own pipelined connection to Redis: packed commands out, hiredis-parsed replies in."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.closed = False

    @classmethod
    async def open(cls, address: _Address) -> _RespConnection:
        """Connect, then authenticate and select the database when the URL says so."""
        loop = asyncio.get_running_loop()
        _transport, connection = await loop.create_connection(cls, address.host, address.port)
        setup = []
        if address.password:
            setup.append(_pack(b"AUTH", *([address.username] if address.username else []), address.password))
        if address.db:
            setup.append(_pack(b"SELECT", address.db))
        for reply in await asyncio.gather(*connection.send(setup)) if setup else ():
            if isinstance(reply, hiredis.ReplyError):
                connection.close()
                raise ConnectionError(f"Redis refused the connection set-up: {reply}")
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("the Redis connection was lost"))

    def send(self, commands: list[bytes]) -> list[asyncio.Future[Any]]:
        """Write the commands in one go; one future per reply."""
        if self.closed or self.transport is None:
            raise ConnectionError("the Redis connection is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.waiting.extend(futures)
        self.transport.write(b"".join(commands))
        return futures

    def close(self) -> None:
        """Hang up (any reply still owed fails)."""
        if self.transport is not None:
            self.transport.close()


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
        # Redis runs one command at a time: a bounded pool that waits for a free connection beats thousands.
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
        self._address = _Address.parse(url)
        self._connection: Optional[_RespConnection] = None
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
            connection = self._connection = await _RespConnection.open(self._address)
        commands = [_pack(b"EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _f in batch]
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
