-- Extend `holder`'s lease on a semaphore (SPEC §7).
--
-- KEYS[1]  the semaphore: sorted set, member = holder, score = lease expiry (ms, Redis time)
-- KEYS[2]  its weights: hash, holder -> weight, only for holders of weight > 1
-- ARGV[1]  holder
-- ARGV[2]  lease TTL in ms
--
-- Returns 1 when the lease was extended, 0 when the holder is gone or its lease has expired
-- (an expired holder is removed: a lease, once over, is never revived).
local sem, weights = KEYS[1], KEYS[2]
local holder = ARGV[1]
local ttl = tonumber(ARGV[2])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local score = redis.call('ZSCORE', sem, holder)
if not score then
  return 0
end
if tonumber(score) <= now then
  redis.call('ZREM', sem, holder)
  redis.call('HDEL', weights, holder)
  return 0
end

redis.call('ZADD', sem, 'XX', now + ttl, holder)
local last = redis.call('ZRANGE', sem, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', sem, last[2])
redis.call('PEXPIREAT', weights, last[2])
return 1
