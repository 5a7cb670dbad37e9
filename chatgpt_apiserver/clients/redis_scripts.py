"""The client rules of `rules.py` (C1-C5) in Lua: each script runs atomically in Redis, on Redis's clock.

As for controllers (state/redis_scripts.py), ARGV[1] is the time in ms, "-1" for Redis's own clock. Keys of
one client share the hash tag {client:NAME}, so they live in one Redis Cluster slot. Buckets live in one
hash per client: field F holds a level, F@ the time it was written.
"""

from __future__ import annotations

from ..state.redis_scripts import KEY_TTL_MS, LUA_NOW

USAGE_TTL_MS = 400 * 86_400_000  # a client's usage counts are kept for 400 days after their last change

_HEAD = LUA_NOW + """-- C1: a bucket's level now (rate per ms)
local function level(key, f, rate, cap)
  local h = redis.call('HMGET', key, f, f .. '@')
  local lv, ts = tonumber(h[1]), tonumber(h[2])
  if not lv then return cap end
  return math.min(cap, lv + math.max(0, now - ts) * rate)
end
-- C2: the slots of live instances; a dead instance's slots are freed
local function slots(inflight, seen, ttl)
  local total = 0
  local flat = redis.call('HGETALL', inflight)
  for i = 1, #flat, 2 do
    local at = tonumber(redis.call('HGET', seen, flat[i]) or '0')
    if at < now - ttl then
      redis.call('HDEL', inflight, flat[i])
      redis.call('HDEL', seen, flat[i])
    else
      total = total + tonumber(flat[i + 1])
    end
  end
  return total
end
"""


def _script(body: str) -> str:
    return (_HEAD + body).replace("@TTL@", str(KEY_TTL_MS))


# KEYS: lim inflight seen spent
# ARGV: now instance max_concurrency heartbeat_ms budget_tokens budget_nano ("": none) n,
#       then n times: field rate_per_ms capacity amount reason
# Returns {ok, reason, wait_ms ("-1": inf), spent_tokens, spent_nano, in_flight (-1: not read),
#          {each bucket's level: after the admission, or as it stands when refused}}
ADMIT = _script("""
local n = tonumber(ARGV[7])
local levels, shown, reason, wait = {}, {}, '', 0
for i = 0, n - 1 do
  local b = 8 + i * 5
  local rate, cap, amount = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local lv = level(KEYS[1], ARGV[b], rate, cap)
  levels[i + 1] = lv
  shown[i + 1] = tostring(lv)
  local need = math.min(amount, cap)
  if lv < need then
    if reason == '' then reason = ARGV[b + 4] end
    wait = math.max(wait, (need - lv) / rate)
  end
end
local bt, bn = tonumber(ARGV[5]), tonumber(ARGV[6])
local st, sn = 0, 0
if bt or bn then
  local s = redis.call('HMGET', KEYS[4], 'tok', 'nano')
  st, sn = tonumber(s[1] or '0'), tonumber(s[2] or '0')
  if (bt and st >= bt) or (bn and sn >= bn) then return {0, 'budget', '0', st, sn, -1, shown} end
end
local total = slots(KEYS[2], KEYS[3], tonumber(ARGV[4]))
local maxc = tonumber(ARGV[3])
if maxc > 0 and total >= maxc then return {0, 'busy', '-1', st, sn, total, shown} end
if reason ~= '' then return {0, reason, tostring(wait), st, sn, total, shown} end
for i = 0, n - 1 do
  local b = 8 + i * 5
  local lv = levels[i + 1] - tonumber(ARGV[b + 3])
  redis.call('HSET', KEYS[1], ARGV[b], lv, ARGV[b] .. '@', now)
  shown[i + 1] = tostring(lv)
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], @TTL@) end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HSET', KEYS[3], ARGV[2], now)
redis.call('PEXPIRE', KEYS[2], @TTL@)
redis.call('PEXPIRE', KEYS[3], @TTL@)
return {1, 'ok', '0', st, sn, total + 1, shown}
""")

# KEYS: lim inflight seen spent usage
# ARGV: now instance release(1/0) n, then n times: field rate_per_ms capacity delta;
#       then tokens nano spent_ttl_ms ("0": no budget) label max_labels usage_ttl_ms and the six usage counts
# (requests errors prompt cached completion nano)
SETTLE = _script("""
if ARGV[3] == '1' then
  local left = redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
  if left <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    redis.call('HDEL', KEYS[3], ARGV[2])
  end
end
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local b = 5 + i * 4
  local rate, cap = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local lv = math.min(cap, level(KEYS[1], ARGV[b], rate, cap) + tonumber(ARGV[b + 3]))
  redis.call('HSET', KEYS[1], ARGV[b], lv, ARGV[b] .. '@', now)
  redis.call('PEXPIRE', KEYS[1], @TTL@)
end
local a = 5 + n * 4
local ttl = tonumber(ARGV[a + 2])
if ttl > 0 then
  redis.call('HINCRBY', KEYS[4], 'tok', ARGV[a])
  redis.call('HINCRBY', KEYS[4], 'nano', ARGV[a + 1])
  redis.call('PEXPIRE', KEYS[4], ttl)
end
local label, most = ARGV[a + 3], tonumber(ARGV[a + 4])
if redis.call('HEXISTS', KEYS[5], label .. '|requests') == 0 then
  local other = redis.call('HEXISTS', KEYS[5], 'other|requests')
  if redis.call('HLEN', KEYS[5]) / 6 >= most - (1 - other) then label = 'other' end
end
local names = {'requests', 'errors', 'prompt', 'cached', 'completion', 'nano'}
for i = 1, 6 do
  redis.call('HINCRBY', KEYS[5], label .. '|' .. names[i], ARGV[a + 5 + i])
end
redis.call('PEXPIRE', KEYS[5], ARGV[a + 5])
return 1
""")

# KEYS: lim inflight seen spent usage   ARGV: now heartbeat_ms n, then n times: field rate_per_ms capacity
# Returns {in_flight, spent_tokens, spent_nano, usage (flat), {levels}}
VIEW = _script("""
local total = 0
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do
  local at = tonumber(redis.call('HGET', KEYS[3], flat[i]) or '0')
  if at >= now - tonumber(ARGV[2]) then total = total + tonumber(flat[i + 1]) end
end
local s = redis.call('HMGET', KEYS[4], 'tok', 'nano')
local out = {}
for i = 0, tonumber(ARGV[3]) - 1 do
  local b = 4 + i * 3
  out[i + 1] = tostring(level(KEYS[1], ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])))
end
return {total, tonumber(s[1] or '0'), tonumber(s[2] or '0'), redis.call('HGETALL', KEYS[5]), out}
""")

CLIENT_SCRIPTS = {"c_admit": ADMIT, "c_settle": SETTLE, "c_view": VIEW}
