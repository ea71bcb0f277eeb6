-- Acquire `weight` slots of a semaphore for `holder` (SPEC §7).
--
-- KEYS[1]  the semaphore: sorted set, member = holder, score = lease expiry (ms, Redis time)
-- KEYS[2]  its weights: hash, holder -> weight, only for holders of weight > 1
-- ARGV[1]  holder
-- ARGV[2]  weight (>= 1)
-- ARGV[3]  limit: passed on every call, so a changed limit applies at once
-- ARGV[4]  lease TTL in ms
--
-- Returns 1 when `holder` holds the semaphore after the call, 0 when it was refused.
-- A holder that already holds it gets 1 and a fresh lease; its weight stays what it was.
local sem, weights = KEYS[1], KEYS[2]
local holder = ARGV[1]
local weight = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A lease whose expiry is <= now is over: drop the holder and its weight.
local expired = redis.call('ZRANGEBYSCORE', sem, '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', sem, '-inf', now)
  for i = 1, #expired, 1000 do
    redis.call('HDEL', weights, unpack(expired, i, math.min(i + 999, #expired)))
  end
end

local expiry = now + ttl
if redis.call('ZSCORE', sem, holder) then
  redis.call('ZADD', sem, 'XX', expiry, holder)
else
  -- weighted count = one per holder, plus (weight - 1) per weighted holder
  local used = redis.call('ZCARD', sem)
  local ws = redis.call('HVALS', weights)
  for i = 1, #ws do
    used = used + tonumber(ws[i]) - 1
  end
  if used + weight > limit then
    return 0
  end
  redis.call('ZADD', sem, expiry, holder)
  if weight > 1 then
    redis.call('HSET', weights, holder, weight)
  end
end

-- Both keys live exactly as long as the longest lease: an abandoned semaphore disappears.
local last = redis.call('ZRANGE', sem, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', sem, last[2])
redis.call('PEXPIREAT', weights, last[2])
return 1
