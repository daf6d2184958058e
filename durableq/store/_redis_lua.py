"""The Lua scripts behind ``RedisStore``: every state change of a message is one script,
so Redis applies it whole or not at all, with no other client in between.

Keys (``P`` is the store's prefix, ``dq:{name}:``; the braces keep a queue's keys in one
cluster slot): ``P..'seq'`` (last id), ``P..'m:'..id`` (a message's hash), ``P..'ready:'..band``
(sorted sets of ready messages scored by due time; members are ids zero-padded to 20
digits, so equal due times order by id), ``P..'leases'`` (in-flight messages by lease
deadline), ``P..'dead'``, ``P..'hist:4'`` (done) and ``P..'hist:7'`` (expired) by finish
time, ``P..'bumps'`` and ``P..'expiries'`` by time, ``P..'results'`` (hash id -> result),
``P..'failures'`` and ``P..'faults'`` (capped lists of msgpack entries) and the counters
``P..'acked'`` and ``P..'late'``. Message fields: ``p`` payload, ``pr`` band, ``due``, ``cr``
created, ``dl`` deadline, ``bu`` bump, ``ex`` expires, ``st`` state, ``at`` attempts, ``fi``
finished, ``lt`` late, ``fe``/``fc``/``ft`` failures per cause.
"""

from __future__ import annotations

from typing import Final

#: Shared helpers, prepended to every script. ARGV[1] is the prefix.
_COMMON: Final = r"""
local P = ARGV[1]
local function mkey(m) return P .. 'm:' .. m end
local function pad(id) return string.format('%020d', id) end
local released = 0
local kept = 0
local function wake_peers()
  if released > 0 then redis.call('PUBLISH', P .. 'put', released) end
  if kept > 0 then redis.call('PUBLISH', P .. 'done', kept) end
end
local function release(m)
  released = released + 1
  local k = mkey(m)
  local f = redis.call('HMGET', k, 'pr', 'due')
  redis.call('HSET', k, 'st', 0)
  redis.call('ZREM', P .. 'leases', m)
  redis.call('ZADD', P .. 'ready:' .. f[1], f[2], m)
end
local function leased(m, at)
  local f = redis.call('HMGET', mkey(m), 'st', 'at')
  return f[1] == '3' and f[2] == at
end
local function forget_times(m)
  redis.call('ZREM', P .. 'bumps', m)
  redis.call('ZREM', P .. 'expiries', m)
end
local function finish(m, state, now, keep)
  local k = mkey(m)
  redis.call('ZREM', P .. 'leases', m)
  if state == 6 then
    redis.call('HSET', k, 'st', 6, 'fi', now)
    redis.call('ZADD', P .. 'dead', now, m)
  elseif keep == '1' then
    redis.call('HSET', k, 'st', state, 'fi', now)
    redis.call('ZADD', P .. 'hist:' .. state, now, m)
    forget_times(m)
  else
    redis.call('DEL', k)
    forget_times(m)
  end
end
local function trim(count, cutoff, logmax)
  local h4, h7 = P .. 'hist:4', P .. 'hist:7'
  if cutoff ~= '' then
    for _, key in ipairs({h4, h7}) do
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. cutoff)) do
        redis.call('DEL', mkey(m))
      end
      redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. cutoff)
    end
    local fl = P .. 'failures'
    while true do
      local head = redis.call('LINDEX', fl, 0)
      if not head or cmsgpack.unpack(head)[1] >= tonumber(cutoff) then break end
      redis.call('LPOP', fl)
    end
  end
  redis.call('LTRIM', P .. 'failures', -tonumber(logmax), -1)
  if count ~= '' then
    local excess = redis.call('ZCARD', h4) + redis.call('ZCARD', h7) - tonumber(count)
    while excess > 0 do
      local a = redis.call('ZRANGE', h4, 0, 0, 'WITHSCORES')
      local b = redis.call('ZRANGE', h7, 0, 0, 'WITHSCORES')
      local key, m = h4, a[1]
      if not a[1] or (b[1] and tonumber(b[2]) < tonumber(a[2])) then key, m = h7, b[1] end
      redis.call('ZREM', key, m)
      redis.call('DEL', mkey(m))
      excess = excess - 1
    end
  end
end
"""

#: ARGV: P, request id, now, band, due, deadline, bump, expires, n, payloads...
PUT: Final = _COMMON + r"""
local req = ARGV[2]
if req ~= '' then
  local prev = redis.call('GET', P .. 'req:' .. req)
  if prev then return cjson.decode(prev) end
end
local n = tonumber(ARGV[9])
local first = redis.call('INCRBY', P .. 'seq', n) - n + 1
local ids = {}
for i = 1, n do
  local id = first + i - 1
  local m = pad(id)
  local f = {'p', ARGV[9 + i], 'pr', ARGV[4], 'due', ARGV[5], 'cr', ARGV[3], 'st', 0, 'at', 0,
             'fe', 0, 'fc', 0, 'ft', 0}
  if ARGV[6] ~= '' then table.insert(f, 'dl'); table.insert(f, ARGV[6]) end
  if ARGV[7] ~= '' then
    table.insert(f, 'bu'); table.insert(f, ARGV[7])
    redis.call('ZADD', P .. 'bumps', ARGV[7], m)
  end
  if ARGV[8] ~= '' then
    table.insert(f, 'ex'); table.insert(f, ARGV[8])
    redis.call('ZADD', P .. 'expiries', ARGV[8], m)
  end
  redis.call('HSET', mkey(m), unpack(f))
  redis.call('ZADD', P .. 'ready:' .. ARGV[4], ARGV[5], m)
  ids[i] = id
end
if req ~= '' then redis.call('SET', P .. 'req:' .. req, cjson.encode(ids), 'EX', 600) end
redis.call('PUBLISH', P .. 'put', n)
return ids
"""

#: ARGV: P, request id, now, lease deadline, n, max band. Returns {id, attempt, payload}...
#: Expired leases (of peers that died) are returned to ready first.
LEASE: Final = _COMMON + r"""
local req, now, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5])
local out = {}
if req ~= '' then
  local prev = redis.call('GET', P .. 'req:' .. req)
  if prev then  -- a retry after a lost reply: hand out what that call leased
    for _, x in ipairs(cjson.decode(prev)) do
      local m = pad(x[1])
      if leased(m, tostring(x[2])) then
        out[#out + 1] = {x[1], x[2], redis.call('HGET', mkey(m), 'p')}
      end
    end
    return out
  end
end
-- Leases whose deadline passed (their peer died) go back first, at their old place.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', '(' .. ARGV[3])) do
  release(m)
end
local memo = {}
for band = 0, tonumber(ARGV[6]) do
  local key = P .. 'ready:' .. band
  local skip = 0
  while #out < n do
    local batch = redis.call('ZRANGEBYSCORE', key, '-inf', ARGV[3], 'LIMIT', skip, n - #out)
    if #batch == 0 then break end
    for _, m in ipairs(batch) do
      local k = mkey(m)
      local f = redis.call('HMGET', k, 'ex', 'dl', 'p')
      if f[1] and tonumber(f[1]) <= now then
        skip = skip + 1  -- expired: tick() files it
      else
        redis.call('ZREM', key, m)
        local at = redis.call('HINCRBY', k, 'at', 1)
        redis.call('HSET', k, 'st', 3)
        redis.call('ZADD', P .. 'leases', ARGV[4], m)
        if f[2] and tonumber(f[2]) < now then
          redis.call('HSET', k, 'lt', 1)
          redis.call('INCR', P .. 'late')
        end
        local id = tonumber(m)
        out[#out + 1] = {id, at, f[3]}
        memo[#memo + 1] = {id, at}
      end
    end
  end
end
if req ~= '' and #memo > 0 then
  redis.call('SET', P .. 'req:' .. req, cjson.encode(memo), 'EX', 600)
end
return out
"""

#: ARGV: P, now, keep, count, cutoff, log max, mode (4 done, 0 ready, 6 dead),
#: with results (0/1), then (id, attempt[, result]) per token. Returns how many applied.
SETTLE: Final = _COMMON + r"""
local now, keep, mode, with = ARGV[2], ARGV[3], tonumber(ARGV[7]), ARGV[8] == '1'
local step = with and 3 or 2
local applied = 0
for i = 9, #ARGV, step do
  local m = pad(tonumber(ARGV[i]))
  if leased(m, ARGV[i + 1]) then
    if mode == 0 then release(m) else finish(m, mode, now, keep) end
    if with then
      redis.call('HSET', P .. 'results', ARGV[i], ARGV[i + 2])
      kept = kept + 1
    end
    applied = applied + 1
  end
end
if mode == 4 then
  redis.call('INCRBY', P .. 'acked', applied)
  trim(ARGV[4], ARGV[5], ARGV[6])
end
wake_peers()
return applied
"""

#: ARGV: P, new deadline, then (id, attempt) per lease. Returns how many were still held.
EXTEND: Final = _COMMON + r"""
local n = 0
for i = 3, #ARGV, 2 do
  local m = pad(tonumber(ARGV[i]))
  if leased(m, ARGV[i + 1]) then
    redis.call('ZADD', P .. 'leases', ARGV[2], m)
    n = n + 1
  end
end
return n
"""

#: ARGV: P, now, keep, count, cutoff, log max, then per attempt 9 values: id, attempt,
#: cause field, failures of that cause (after this one), retry (0/1), due, band, result
#: ('' none, else 'r' .. bytes), failure entry ('' none). Returns 1/0 per attempt.
FAIL: Final = _COMMON + r"""
local now, keep = ARGV[2], ARGV[3]
local out = {}
for i = 7, #ARGV, 9 do
  local id, m = ARGV[i], pad(tonumber(ARGV[i]))
  local k = mkey(m)
  local field, count = ARGV[i + 2], tonumber(ARGV[i + 3])
  if leased(m, ARGV[i + 1]) and tonumber(redis.call('HGET', k, field)) == count - 1 then
    redis.call('HSET', k, field, count, 'due', ARGV[i + 5], 'pr', ARGV[i + 6])
    if ARGV[i + 4] == '1' then
      release(m)
    else
      finish(m, 6, now, keep)
      local result = ARGV[i + 7]
      if result ~= '' then
        redis.call('HSET', P .. 'results', id, string.sub(result, 2))
        kept = kept + 1
      end
    end
    if ARGV[i + 8] ~= '' then redis.call('RPUSH', P .. 'failures', ARGV[i + 8]) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
trim(ARGV[4], ARGV[5], ARGV[6])
wake_peers()
return out
"""

#: ARGV: P, now, keep, count, cutoff, log max. Bumps, expiries, and leases of peers that
#: passed their deadline. Returns the ids that expired.
TICK: Final = _COMMON + r"""
local now, keep = ARGV[2], ARGV[3]
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'bumps', '-inf', now)) do
  local k = mkey(m)
  local f = redis.call('HMGET', k, 'st', 'pr', 'due')
  if f[1] then
    redis.call('HDEL', k, 'bu')
    redis.call('HSET', k, 'pr', 0)
    if f[1] == '0' then
      redis.call('ZREM', P .. 'ready:' .. f[2], m)
      redis.call('ZADD', P .. 'ready:0', f[3], m)
    end
  end
end
redis.call('ZREMRANGEBYSCORE', P .. 'bumps', '-inf', now)
local expired = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'expiries', '-inf', now)) do
  local f = redis.call('HMGET', mkey(m), 'st', 'pr')
  if f[1] == '0' then
    redis.call('ZREM', P .. 'ready:' .. f[2], m)
    finish(m, 7, now, keep)
    expired[#expired + 1] = tonumber(m)
  end
  if f[1] ~= '3' then redis.call('ZREM', P .. 'expiries', m) end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', '(' .. now)) do
  release(m)
end
trim(ARGV[4], ARGV[5], ARGV[6])
wake_peers()
return expired
"""

#: ARGV: P, now. Returns {ready, waiting} per band, in flight, dead, done, expired,
#: put total, acked, late, then the oldest created time at the head of each band ('' none).
COUNTS: Final = _COMMON + r"""
local now = tonumber(ARGV[2])
local out, heads = {}, {}
local stale = {[0] = {0, 0}, [1] = {0, 0}, [2] = {0, 0}}  -- expired, not yet ticked
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'expiries', '-inf', ARGV[2])) do
  local f = redis.call('HMGET', mkey(m), 'st', 'pr', 'due')
  if f[1] == '0' then
    local s = stale[tonumber(f[2])]
    s[2] = s[2] + 1
    if tonumber(f[3]) <= now then s[1] = s[1] + 1 end
  end
end
for band = 0, 2 do
  local key = P .. 'ready:' .. band
  out[#out + 1] = redis.call('ZCOUNT', key, '-inf', ARGV[2]) - stale[band][1]
  out[#out + 1] = redis.call('ZCARD', key) - stale[band][2]
  local head = ''
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', ARGV[2], 'LIMIT', 0, 8)) do
    local f = redis.call('HMGET', mkey(m), 'cr', 'ex')
    if not f[2] or tonumber(f[2]) > now then
      if head == '' or tonumber(f[1]) < tonumber(head) then head = f[1] end
    end
  end
  heads[#heads + 1] = head
end
for _, key in ipairs({'leases', 'dead', 'hist:4', 'hist:7'}) do
  out[#out + 1] = redis.call('ZCARD', P .. key)
end
for _, key in ipairs({'seq', 'acked', 'late'}) do
  out[#out + 1] = tonumber(redis.call('GET', P .. key) or '0')
end
for _, h in ipairs(heads) do out[#out + 1] = h end
return out
"""

#: ARGV: P, now. The earliest due time, bump, expiry or peer lease deadline after now.
NEXT_DUE: Final = _COMMON + r"""
local after = '(' .. ARGV[2]
local best = nil
local function consider(key, lo)
  local r = redis.call('ZRANGEBYSCORE', key, lo, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if r[2] and (best == nil or tonumber(r[2]) < best) then best = tonumber(r[2]) end
end
for band = 0, 2 do consider(P .. 'ready:' .. band, after) end
consider(P .. 'bumps', '-inf')
consider(P .. 'expiries', after)
consider(P .. 'leases', after)
if best == nil then return nil end
return tostring(best)
"""

#: ARGV: P, then ids. Fields of each message ({} when gone), in the order of ``FIELDS``.
READ: Final = _COMMON + r"""
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HMGET', mkey(pad(tonumber(ARGV[i]))),
    'st', 'pr', 'due', 'at', 'cr', 'fi', 'dl', 'ex', 'lt', 'p')
end
return out
"""
FIELDS: Final = ("st", "pr", "due", "at", "cr", "fi", "dl", "ex", "lt", "p")

#: ARGV: P, since ('-inf'), limit (-1 all), then state keys. Ids per key, newest first.
FINISHED: Final = _COMMON + r"""
local out = {}
for i = 4, #ARGV do
  local r = redis.call('ZREVRANGEBYSCORE', P .. ARGV[i], '+inf', ARGV[2], 'LIMIT', 0, ARGV[3])
  for _, m in ipairs(r) do out[#out + 1] = tonumber(m) end
end
return out
"""

#: ARGV: P, now, then ids ('*' alone: every dead message). Returns the revived ids.
REVIVE: Final = _COMMON + r"""
local members = {}
if ARGV[3] == '*' then
  members = redis.call('ZRANGE', P .. 'dead', 0, -1)
else
  for i = 3, #ARGV do members[#members + 1] = pad(tonumber(ARGV[i])) end
end
local out = {}
for _, m in ipairs(members) do
  if redis.call('ZREM', P .. 'dead', m) == 1 then
    local k = mkey(m)
    redis.call('HDEL', k, 'fi')
    redis.call('HSET', k, 'due', ARGV[2], 'fe', 0, 'fc', 0, 'ft', 0)
    redis.call('HDEL', P .. 'results', tonumber(m))
    release(m)
    out[#out + 1] = tonumber(m)
  end
end
wake_peers()
return out
"""

#: ARGV: P, older than ('+inf' all), then state keys. Returns how many went.
PURGE: Final = _COMMON + r"""
local n = 0
for i = 3, #ARGV do
  local key = P .. ARGV[i]
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ARGV[2])) do
    redis.call('DEL', mkey(m))
    redis.call('HDEL', P .. 'results', tonumber(m))
    forget_times(m)
    redis.call('ZREM', key, m)
    n = n + 1
  end
end
return n
"""

#: ARGV: P, then ids. Removes the ready ones; returns how many.
DISCARD: Final = _COMMON + r"""
local n = 0
for i = 2, #ARGV do
  local m = pad(tonumber(ARGV[i]))
  local f = redis.call('HMGET', mkey(m), 'st', 'pr')
  if f[1] == '0' then
    redis.call('ZREM', P .. 'ready:' .. f[2], m)
    forget_times(m)
    redis.call('DEL', mkey(m))
    n = n + 1
  end
end
return n
"""

#: ARGV: P, upto. Ready and in-flight ids up to ``upto``.
UNFINISHED: Final = _COMMON + r"""
local out, upto = {}, tonumber(ARGV[2])
for _, key in ipairs({'ready:0', 'ready:1', 'ready:2', 'leases'}) do
  for _, m in ipairs(redis.call('ZRANGE', P .. key, 0, -1)) do
    if tonumber(m) <= upto then out[#out + 1] = tonumber(m) end
  end
end
return out
"""

#: ARGV: P, before. Every lease whose deadline passed back to ready; returns how many.
REQUEUE: Final = _COMMON + r"""
local r = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', '(' .. ARGV[2])
for _, m in ipairs(r) do release(m) end
wake_peers()
return #r
"""

#: ARGV: P, now. Whether any message is ready for delivery.
HAS_READY: Final = _COMMON + r"""
local now = tonumber(ARGV[2])
for band = 0, 2 do
  local skip = 0
  while true do
    local r = redis.call('ZRANGEBYSCORE', P .. 'ready:' .. band, '-inf', ARGV[2],
                         'LIMIT', skip, 64)
    if #r == 0 then break end
    for _, m in ipairs(r) do
      local ex = redis.call('HGET', mkey(m), 'ex')
      if not ex or tonumber(ex) > now then return 1 end
    end
    skip = skip + #r
  end
end
return 0
"""
