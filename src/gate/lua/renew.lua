-- Extend the leases of holders of one semaphore (SPEC §7), many at once.
--
-- KEYS[1]  the semaphore: sorted set, member = holder, score = lease expiry (ms, Redis time)
-- KEYS[2]  its weights: hash, holder -> weight, only for holders of weight > 1
-- ARGV[1]  lease TTL in ms
-- ARGV[2…] the holders
--
-- Returns, for each holder in order, 1 when its lease was extended, 0 when the holder is gone
-- or its lease has expired (an expired holder is removed: a lease, once over, is never
-- revived).
local sem, weights = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[1])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local out = {}
local renewed = false
for i = 2, #ARGV do
  local holder = ARGV[i]
  local score = redis.call('ZSCORE', sem, holder)
  if not score then
    out[#out + 1] = 0
  elseif tonumber(score) <= now then
    redis.call('ZREM', sem, holder)
    redis.call('HDEL', weights, holder)
    out[#out + 1] = 0
  else
    redis.call('ZADD', sem, 'XX', now + ttl, holder)
    out[#out + 1] = 1
    renewed = true
  end
end

if renewed then
  local last = redis.call('ZRANGE', sem, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', sem, last[2])
  redis.call('PEXPIREAT', weights, last[2])
end
return out
