-- A session stops keeping `holder`'s hold of a semaphore without ending it (SPEC §7): another
-- session may keep it too (replicas claim a run under one name). Kept by nobody else, the hold
-- lapses one TTL from now unless some session acquires it again.
--
-- KEYS[1..4]  the semaphore: <s>, <s>:w, <s>:k, <s>:s (prelude.lua)
-- KEYS[5]     <p>:sessions:n
-- ARGV[1]     holder
-- ARGV[2]     the session letting go
-- ARGV[3]     lease TTL in ms
--
-- Returns 1 when the session kept the hold, else 0.
local sem, keepers, counts = KEYS[1], KEYS[3], KEYS[5]
local holder, session, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local list = redis.call('HGET', keepers, holder)
if not list then
  return 0
end
local left, found = {}, false
for s in string.gmatch(list, '%S+') do
  if s == session then found = true else left[#left + 1] = s end
end
if not found then
  return 0
end
unkeep(counts, session)
if #left > 0 then
  redis.call('HSET', keepers, holder, table.concat(left, ' '))
else
  redis.call('HDEL', keepers, holder)
  redis.call('ZADD', sem, 'XX', clock() + ttl, holder)
end
return 1
