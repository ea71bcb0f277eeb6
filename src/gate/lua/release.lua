-- Release `holder`'s slots of a semaphore (SPEC §7): the hold ends, unless another live
-- session keeps it — then the releasing session only lets go of it (a replica that lost the
-- write of a run or a try must not free the winner's slot). Releasing a holder that is gone is
-- a no-op, so a release can be retried.
--
-- KEYS[1..4]  the semaphore: <s>, <s>:w, <s>:k, <s>:s (prelude.lua)
-- KEYS[5]     <p>:sessions:n
-- KEYS[6]     <p>:sessions
-- ARGV[1]     holder
-- ARGV[2]     the session releasing
--
-- Returns 1 when the holder was removed, 0 when it was not there, 2 when another live session
-- keeps it (the releasing session, if it kept it, no longer does).
local sem, weights, keepers, kept, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sessions = KEYS[6]
local holder, session = ARGV[1], ARGV[2]
local list = redis.call('HGET', keepers, holder)
if list then
  local now = clock()
  local left, mine, others = {}, false, false
  for s in string.gmatch(list, '%S+') do
    if s == session then
      mine = true
    else
      left[#left + 1] = s
      if alive(sessions, s, now) then others = true end
    end
  end
  if others then
    if mine then
      unkeep(counts, session)
      redis.call('HSET', keepers, holder, table.concat(left, ' '))
    end
    return 2
  end
  unkeep(counts, list)
end
local removed = redis.call('ZREM', sem, holder)
redis.call('HDEL', weights, holder)
redis.call('HDEL', keepers, holder)
if redis.call('EXISTS', sem) == 0 then
  redis.call('DEL', weights, keepers, kept)
end
return removed
