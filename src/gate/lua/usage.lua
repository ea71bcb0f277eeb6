-- The weighted count of unexpired holders of a semaphore (SPEC §7). Read-only.
--
-- KEYS[1]  the semaphore: sorted set, member = holder, score = lease expiry (ms, Redis time)
-- KEYS[2]  its weights: hash, holder -> weight, only for holders of weight > 1
local sem, weights = KEYS[1], KEYS[2]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local live = redis.call('ZRANGEBYSCORE', sem, '(' .. now, '+inf')
local used = #live
if used > 0 and redis.call('EXISTS', weights) == 1 then
  for i = 1, #live do
    local w = redis.call('HGET', weights, live[i])
    if w then
      used = used + tonumber(w) - 1
    end
  end
end
return used
