"""The Lua scripts behind the shared rate-limit state; each runs atomically in Redis, on Redis's clock."""

from __future__ import annotations

KEY_TTL_MS = 3_600_000

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
