-- Release `holder`'s slots of a semaphore (SPEC §7): the hold ends, whoever keeps it.
-- Releasing a holder that is gone is a no-op, so a release can be retried.
--
-- KEYS[1..4]  the semaphore: <s>, <s>:w, <s>:k, <s>:s (prelude.lua)
-- KEYS[5]     <p>:sessions:n
-- ARGV[1]     holder
--
-- Returns 1 when the holder was removed, 0 when it was not there.
local sem, weights, keepers, kept, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local holder = ARGV[1]
local list = redis.call('HGET', keepers, holder)
if list then
  unkeep(counts, list)
end
local removed = redis.call('ZREM', sem, holder)
redis.call('HDEL', weights, holder)
redis.call('HDEL', keepers, holder)
if redis.call('EXISTS', sem) == 0 then
  redis.call('DEL', weights, keepers, kept)
end
return removed
