-- Acquire one or several semaphores for one holder, all or none (SPEC §7): a run takes a slot
-- of the global limit, its DAG's and its Backfill's in one atomic step; a single `acquire` is
-- a claim of one semaphore. The only script that admits. An acquire is a sign of life: it
-- extends the session's lease (a new session is registered by session.lua sent first in the
-- same pipeline).
--
-- KEYS[1]          <p>:sessions
-- KEYS[2]          <p>:sessions:n
-- KEYS[4i-1..4i+2] semaphore i: <s>, <s>:w, <s>:k, <s>:s (prelude.lua)
-- ARGV[1]          holder
-- ARGV[2]          the session asking (it keeps what is granted)
-- ARGV[3]          lease TTL in ms
-- ARGV[2i+2]       weight for semaphore i (>= 1)
-- ARGV[2i+3]       limit of semaphore i, passed on every call
--
-- Returns 0 when `holder` holds every semaphore after the call, or i (1-based) of the first
-- semaphore that refused it (then nothing was taken), or -1 when the session had ended
-- (nothing was taken: its holder goes on under a new session). A semaphore the holder
-- already holds admits it again with its old weight, the session among its keepers (so a
-- retried call never takes slots twice). Holds that are over are dropped first.
local sessions, counts = KEYS[1], KEYS[2]
local holder, session, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = (#KEYS - 2) / 4
local now = clock()
if not alive(sessions, session, now) then
  return -1
end
redis.call('ZADD', sessions, 'XX', now + ttl, session)

-- first every check, then every change: a refusal leaves nothing behind
local held = {}
for i = 1, n do
  local b = 4 * i - 1
  local sem, weights, keepers, kept = KEYS[b], KEYS[b + 1], KEYS[b + 2], KEYS[b + 3]
  purge(sem, weights, keepers, kept, sessions, now)
  if redis.call('ZSCORE', sem, holder) then
    held[i] = true
  else
    local weight = tonumber(ARGV[2 * i + 2])
    local limit = tonumber(ARGV[2 * i + 3])
    if count(sem, weights) + weight > limit then
      return i
    end
    held[i] = false
  end
end

for i = 1, n do
  local b = 4 * i - 1
  local sem, weights, keepers, kept = KEYS[b], KEYS[b + 1], KEYS[b + 2], KEYS[b + 3]
  local weight = tonumber(ARGV[2 * i + 2])
  if not held[i] and weight > 1 then
    redis.call('HSET', weights, holder, weight)
  end
  keep(sem, keepers, kept, counts, holder, session)
end
return 0
