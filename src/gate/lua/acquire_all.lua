-- Acquire one or several semaphores for one holder, all or none (SPEC §7): a run takes a slot
-- of the global limit, its DAG's and its Backfill's in one atomic step; a single `acquire` is
-- a claim of one semaphore. The only script that admits.
--
-- KEYS[2i-1]  semaphore i: sorted set, member = holder, score = lease expiry (ms, Redis time)
-- KEYS[2i]    its weights: hash, holder -> weight, only for holders of weight > 1
-- ARGV[1]     holder
-- ARGV[2]     lease TTL in ms
-- ARGV[2i+1]  weight for semaphore i (>= 1)
-- ARGV[2i+2]  limit of semaphore i, passed on every call
--
-- Returns 0 when `holder` holds every semaphore after the call, or i (1-based) of the first
-- semaphore that refused it (then nothing was taken). A semaphore the holder already holds
-- admits it again with a fresh lease and its old weight (so a retried call never takes slots
-- twice). A lease whose expiry is <= now is over: its holder and weight are dropped first.
local holder = ARGV[1]
local ttl = tonumber(ARGV[2])
local n = #KEYS / 2

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- first every check, then every change: a refusal leaves nothing behind
local held = {}
for i = 1, n do
  local sem, weights = KEYS[2 * i - 1], KEYS[2 * i]
  local weight = tonumber(ARGV[2 * i + 1])
  local limit = tonumber(ARGV[2 * i + 2])
  local expired = redis.call('ZRANGEBYSCORE', sem, '-inf', now)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', sem, '-inf', now)
    for j = 1, #expired, 1000 do
      redis.call('HDEL', weights, unpack(expired, j, math.min(j + 999, #expired)))
    end
  end
  if redis.call('ZSCORE', sem, holder) then
    held[i] = true
  else
    local used = redis.call('ZCARD', sem)
    local ws = redis.call('HVALS', weights)
    for j = 1, #ws do
      used = used + tonumber(ws[j]) - 1
    end
    if used + weight > limit then
      return i
    end
    held[i] = false
  end
end

local expiry = now + ttl
for i = 1, n do
  local sem, weights = KEYS[2 * i - 1], KEYS[2 * i]
  local weight = tonumber(ARGV[2 * i + 1])
  if held[i] then
    redis.call('ZADD', sem, 'XX', expiry, holder)
  else
    redis.call('ZADD', sem, expiry, holder)
    if weight > 1 then
      redis.call('HSET', weights, holder, weight)
    end
  end
  local last = redis.call('ZRANGE', sem, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', sem, last[2])
  redis.call('PEXPIREAT', weights, last[2])
end
return 0
