-- Release `holder`'s slots of a semaphore (SPEC §7). Releasing a holder that is gone is a
-- no-op, so a release can be retried.
--
-- KEYS[1]  the semaphore: sorted set, member = holder, score = lease expiry (ms, Redis time)
-- KEYS[2]  its weights: hash, holder -> weight, only for holders of weight > 1
-- ARGV[1]  holder
--
-- Returns 1 when the holder was removed, 0 when it was not there.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return removed
