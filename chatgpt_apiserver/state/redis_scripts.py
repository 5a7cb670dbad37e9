"""The rules of `rules.py` (R1-R8) in Lua: each script runs atomically in Redis, on Redis's clock.

Every script takes the time in ms as ARGV[1]; "-1" means Redis's own clock (TIME), which is what the
server uses, so no host's clock matters. Tests pass a time to run the conformance table exactly.
Keys of one controller share a hash tag ({name}), so they live in one Redis Cluster slot.
"""

from __future__ import annotations

KEY_TTL_MS = 3_600_000  # every key expires an hour after its last use
FOREVER_TTL_MS = 7 * 86_400_000  # a disable "until a reload" is forgotten after a week

# Every script's clock: the caller's milliseconds, or Redis's own when the caller passes a negative time.
LUA_NOW = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_HEAD = LUA_NOW + """local function keep(key) redis.call('PEXPIRE', key, @TTL@) end
-- R1, R2: a bucket's level now, its capacity and its rate (a correction may have lowered both).
local function bucket(key, rate, cap)
  local h = redis.call('HMGET', key, 'level', 'ts', 'cap', 'rate')
  local c, r = cap, rate
  local ccap = tonumber(h[3])
  if ccap and ccap < c then c, r = ccap, tonumber(h[4]) end
  local lv, ts = tonumber(h[1]), tonumber(h[2])
  if not lv then return c, c, r end
  return math.min(c, lv + math.max(0, now - ts) * r), c, r
end
"""


def _script(body: str) -> str:
    return (_HEAD + body).replace("@TTL@", str(KEY_TTL_MS)).replace("@FOREVER@", str(FOREVER_TTL_MS))


# KEYS: req tok inflight seen cool off brk
# ARGV: now instance model req_rate req_cap tok_rate tok_cap tokens max_concurrency probe_ms heartbeat_ms
# Returns {ok, wait_ms ("-1": inf), reason, probe, why, req_level, tok_level, in_flight (-1: not read), fails,
#          scope}
TAKE = _script("""
local model = ARGV[3]
local scopes = {'*', model}
local rl, tl, total, fails = '', '', -1, 0
local function out(ok, wait, reason, probe, why, scope)
  return {ok, wait, reason, probe, why, rl, tl, total, fails, scope or ''}
end
-- R8: disabled, the whole controller then the model
local off = redis.call('HMGET', KEYS[6], '*:until', '*:why', '*:forever', model .. ':until', model .. ':why',
                       model .. ':forever')
for i = 1, 4, 3 do
  local u = tonumber(off[i] or '0')
  if u > now then
    return out(0, off[i + 2] == '1' and '-1' or tostring(u - now), 'disabled', 0, off[i + 1], scopes[(i + 2) / 3])
  end
end
local cool = tonumber(redis.call('GET', KEYS[5]) or '0')
if cool > now then return out(0, tostring(cool - now), 'cooling', 0, '') end
local b = redis.call('HMGET', KEYS[7], '*:until', '*:ej', '*:probe', '*:fails',
                     model .. ':until', model .. ':ej', model .. ':probe', model .. ':fails')
fails = math.max(tonumber(b[4] or '0'), tonumber(b[8] or '0'))
for i = 1, 2 do
  local u = tonumber(b[i * 4 - 3] or '0')
  if u > now then return out(0, tostring(u - now), 'ejected', 0, '', scopes[i]) end
end
for i = 1, 2 do
  local ej, probe = tonumber(b[i * 4 - 2] or '0'), tonumber(b[i * 4 - 1] or '0')
  if ej > 0 and probe > now then return out(0, tostring(probe - now), 'probing', 0, '', scopes[i]) end
end
-- R3: count the slots of live instances only; a dead instance's slots are freed
total = 0
local flat = redis.call('HGETALL', KEYS[3])
for i = 1, #flat, 2 do
  local seen = tonumber(redis.call('HGET', KEYS[4], flat[i]) or '0')
  if seen < now - tonumber(ARGV[11]) then
    redis.call('HDEL', KEYS[3], flat[i])
    redis.call('HDEL', KEYS[4], flat[i])
  else
    total = total + tonumber(flat[i + 1])
  end
end
local maxc = tonumber(ARGV[9])
if maxc > 0 and total >= maxc then return out(0, '-1', 'busy', 0, '') end
-- R1
local rcap, tcap, want = tonumber(ARGV[5]), tonumber(ARGV[7]), tonumber(ARGV[8])
local rlv, tlv
local tcap_now = tcap
if rcap > 0 then
  local c, r
  rlv, c, r = bucket(KEYS[1], tonumber(ARGV[4]), rcap)
  rl = tostring(rlv)
  if rlv < math.min(1, c) then return out(0, tostring((math.min(1, c) - rlv) / r), 'requests', 0, '') end
end
if tcap > 0 then
  local c, r
  tlv, c, r = bucket(KEYS[2], tonumber(ARGV[6]), tcap)
  tcap_now = c
  tl = tostring(tlv)
  local need = math.min(want, c)
  if tlv < need then return out(0, tostring((need - tlv) / r), 'tokens', 0, '') end
end
if rcap > 0 then
  redis.call('HSET', KEYS[1], 'level', rlv - 1, 'ts', now)
  keep(KEYS[1])
  rl = tostring(rlv - 1)
end
if tcap > 0 then
  local taken = math.min(want, tcap_now)
  redis.call('HSET', KEYS[2], 'level', tlv - taken, 'ts', now)
  keep(KEYS[2])
  tl = tostring(tlv - taken)
end
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('HSET', KEYS[4], ARGV[2], now)
keep(KEYS[3])
keep(KEYS[4])
total = total + 1
-- R7: after an ejection has run out, this admission is the probe
local probe = 0
for i = 1, 2 do
  if tonumber(b[i * 4 - 2] or '0') > 0 then
    redis.call('HSET', KEYS[7], scopes[i] .. ':probe', now + tonumber(ARGV[10]))
    probe = 1
  end
end
return out(1, '0', 'ok', probe, '')
""")

# KEYS: req tok inflight seen brk
# ARGV: now instance model reserved req_rate req_cap tok_rate tok_cap remaining_req remaining_tok limit_req
#       limit_tok age_ms probe used     (an empty string: not known)
SETTLE = _script("""
local left = redis.call('HINCRBY', KEYS[3], ARGV[2], -1)
if left <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
end
if ARGV[14] == '1' then redis.call('HDEL', KEYS[5], '*:probe', ARGV[3] .. ':probe') end
local age = tonumber(ARGV[13]) or 0
local function settle(key, rate, cap, reserved, used, remaining, limit)
  if cap <= 0 then return end
  local lv, c, r = bucket(key, rate, cap)
  local changed = false
  if reserved and used then
    lv = math.min(c, lv + math.min(reserved, c) - used)
    changed = true
  end
  if limit and limit > 0 and limit < c then
    r = r * limit / c
    c = limit
    lv = math.min(lv, limit)
    redis.call('HSET', key, 'cap', c, 'rate', r)
    changed = true
  end
  if remaining and remaining + math.max(0, age) * r < lv then
    lv = remaining + math.max(0, age) * r
    changed = true
  end
  if changed then
    redis.call('HSET', key, 'level', lv, 'ts', now)
    keep(key)
  end
end
settle(KEYS[1], tonumber(ARGV[5]), tonumber(ARGV[6]), nil, nil, tonumber(ARGV[9]), tonumber(ARGV[11]))
settle(KEYS[2], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[4]), tonumber(ARGV[15]), tonumber(ARGV[10]),
       tonumber(ARGV[12]))
return left
""")

# KEYS: cool req   ARGV: now seconds req_rate req_cap       (R4)
COOL = _script("""
local untilms = now + math.floor(tonumber(ARGV[2]) * 1000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untilms > cur then redis.call('SET', KEYS[1], untilms, 'PX', untilms - now) end
local rcap = tonumber(ARGV[4])
if rcap > 0 then
  local lv = bucket(KEYS[2], tonumber(ARGV[3]), rcap)
  if lv > 0 then
    redis.call('HSET', KEYS[2], 'level', 0, 'ts', now)
    keep(KEYS[2])
  end
end
return tostring(math.max(untilms, cur) - now)
""")

# KEYS: off (one key per credentials fingerprint)   ARGV: now scope seconds ("-1": until a reload) reason   (R5)
DISABLE = _script("""
local s, secs = ARGV[2], tonumber(ARGV[3])
local untilms = secs < 0 and (now + @FOREVER@) or (now + math.floor(secs * 1000))
local cur = tonumber(redis.call('HGET', KEYS[1], s .. ':until') or '0')
if untilms > cur then
  redis.call('HSET', KEYS[1], s .. ':until', untilms, s .. ':why', ARGV[4], s .. ':forever', secs < 0 and '1' or '0')
  if redis.call('PTTL', KEYS[1]) < untilms - now then redis.call('PEXPIRE', KEYS[1], untilms - now) end
end
return 1
""")

# KEYS: off   ARGV: now      -- a reload lifts the disables that last until a reload (R5)
CLEAR = _script("""
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local f = flat[i]
  if string.sub(f, -8) == ':forever' and flat[i + 1] == '1' then
    local s = string.sub(f, 1, -9)
    redis.call('HDEL', KEYS[1], s .. ':until', s .. ':why', f)
  end
end
return 1
""")

# KEYS: brk   ARGV: now scope threshold may_eject base_ms max_ms       (R6)
# Returns {ejection_ms, fails}
FAIL = _script("""
local s = ARGV[2]
local fails = redis.call('HINCRBY', KEYS[1], s .. ':fails', 1)
keep(KEYS[1])
local h = redis.call('HMGET', KEYS[1], s .. ':ej', s .. ':until', s .. ':probe')
local ej, untilms, probe = tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0')
if untilms > now then return {'0', fails} end
local probing = ej > 0 and probe > 0
redis.call('HDEL', KEYS[1], s .. ':probe')
if (fails < tonumber(ARGV[3]) and not probing) or ARGV[4] ~= '1' then return {'0', fails} end
ej = ej + 1
local duration = math.min(tonumber(ARGV[6]), tonumber(ARGV[5]) * 2 ^ (ej - 1))
redis.call('HSET', KEYS[1], s .. ':ej', ej, s .. ':until', now + duration)
return {tostring(duration), fails}
""")

# KEYS: brk   ARGV: now model      -- a usable answer closes the model's breaker and the controller's (R6)
RESET = _script("""
local ej = 0
for _, s in ipairs({ARGV[2], '*'}) do
  ej = ej + tonumber(redis.call('HGET', KEYS[1], s .. ':ej') or '0')
  redis.call('HDEL', KEYS[1], s .. ':fails', s .. ':ej', s .. ':until', s .. ':probe')
end
return ej
""")

# KEYS: req tok inflight seen cool off brk   ARGV: now req_rate req_cap tok_rate tok_cap heartbeat_ms
# Returns {req_level, req_cap, req_rate, tok_level, tok_cap, tok_rate, in_flight, cool_ms, off (flat), brk (flat)}
VIEW = _script("""
local out = {'', '', '', '', '', ''}
for i, spec in ipairs({{KEYS[1], 2}, {KEYS[2], 4}}) do
  local cap = tonumber(ARGV[spec[2] + 1])
  if cap > 0 then
    local lv, c, r = bucket(spec[1], tonumber(ARGV[spec[2]]), cap)
    out[i * 3 - 2], out[i * 3 - 1], out[i * 3] = tostring(lv), tostring(c), tostring(r)
  end
end
local total = 0
local flat = redis.call('HGETALL', KEYS[3])
for i = 1, #flat, 2 do
  local seen = tonumber(redis.call('HGET', KEYS[4], flat[i]) or '0')
  if seen >= now - tonumber(ARGV[6]) then total = total + tonumber(flat[i + 1]) end
end
out[7] = total
out[8] = tostring(math.max(0, tonumber(redis.call('GET', KEYS[5]) or '0') - now))
local off = redis.call('HGETALL', KEYS[6])
local brk = redis.call('HGETALL', KEYS[7])
for i = 1, #off, 2 do
  if string.sub(off[i], -6) == ':until' then off[i + 1] = tostring(tonumber(off[i + 1]) - now) end
end
for i = 1, #brk, 2 do
  local f = brk[i]
  local tail = string.sub(f, -6)
  if tail == ':until' or tail == ':probe' then brk[i + 1] = tostring(tonumber(brk[i + 1]) - now) end
end
out[9] = off
out[10] = brk
return out
""")

# KEYS: inflight seen   ARGV: now instance count    -- this instance is alive and holds `count` slots
# ("-1": keep the count, refresh the heartbeat only if it holds any)
BEAT = _script("""
local count = tonumber(ARGV[3])
if count < 0 then
  if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then redis.call('HSET', KEYS[2], ARGV[2], now) end
elseif count == 0 then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], count)
  redis.call('HSET', KEYS[2], ARGV[2], now)
end
keep(KEYS[1])
keep(KEYS[2])
return 1
""")

# KEYS: req tok   ARGV: now req_rate req_cap req_level tok_rate tok_cap tok_level
# Carry levels over after an outage: a level is only ever lowered, so a Redis restart hands out no burst.
SEED = _script("""
local function seed(key, rate, cap, level)
  if cap <= 0 or not level then return end
  local lv = bucket(key, rate, cap)
  if level < lv then
    redis.call('HSET', key, 'level', level, 'ts', now)
    keep(key)
  end
end
seed(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
seed(KEYS[2], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
return 1
""")

# The owners of stored responses and conversations (state/affinity.py): KEYS: P:aff:<id>
AFF_GET = "return redis.call('GET', KEYS[1])"
AFF_SET = "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1"  # ARGV: owner ttl_seconds
AFF_DEL = "return redis.call('DEL', KEYS[1])"

SCRIPTS = {"take": TAKE, "settle": SETTLE, "cool": COOL, "disable": DISABLE, "clear": CLEAR, "fail": FAIL,
           "reset": RESET, "view": VIEW, "beat": BEAT, "seed": SEED,
           "aff_get": AFF_GET, "aff_set": AFF_SET, "aff_del": AFF_DEL}
