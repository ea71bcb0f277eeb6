-- Shared by every gate script: the Rust side puts it in front of each (SPEC §7, docs/GATE.md).
--
-- A semaphore <s> is four keys, passed as KEYS in this order:
--   <s>     sorted set: member = holder, score = +inf while a session keeps the hold, else the
--           instant (ms, Redis time) the hold lapses
--   <s>:w   hash: holder -> weight, only for holders of weight > 1
--   <s>:k   hash: holder -> the sessions keeping it, space-separated
--   <s>:s   set: the sessions keeping some hold of <s>
-- and the sessions: <p>:sessions, a sorted set (member = session, score = the end of its lease),
-- and <p>:sessions:n, a hash (session -> how many holds it keeps). A session that has ended
-- never comes back: its holder goes on under a new one.

-- Now in ms of Redis server time.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether a session's lease runs (an unknown session has ended).
local function alive(sessions, session, now)
  local e = redis.call('ZSCORE', sessions, session)
  return e and tonumber(e) > now
end

-- Removes the members of sorted set `zset` scored <= now, and their fields of hash `hash`;
-- how many.
local function drop_until(zset, hash, now)
  local over = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  if #over > 0 then
    redis.call('ZREMRANGEBYSCORE', zset, '-inf', now)
    for j = 1, #over, 1000 do
      redis.call('HDEL', hash, unpack(over, j, math.min(j + 999, #over)))
    end
  end
  return #over
end

-- Ends the holds of a semaphore that are over: those let go whose lapse has come, and those
-- whose every keeping session has ended. A semaphore with no hold left leaves no key.
local function purge(sem, weights, keepers, kept, sessions, now)
  local removed = drop_until(sem, weights, now) > 0
  local ended, any = {}, false
  for _, s in ipairs(redis.call('SMEMBERS', kept)) do
    if not alive(sessions, s, now) then
      ended[s], any = true, true
      redis.call('SREM', kept, s)
    end
  end
  if any then
    local all = redis.call('HGETALL', keepers)
    for i = 1, #all, 2 do
      local holder, left, changed = all[i], {}, false
      for s in string.gmatch(all[i + 1], '%S+') do
        if ended[s] then changed = true else left[#left + 1] = s end
      end
      if #left == 0 then
        removed = true
        redis.call('ZREM', sem, holder)
        redis.call('HDEL', weights, holder)
        redis.call('HDEL', keepers, holder)
      elseif changed then
        redis.call('HSET', keepers, holder, table.concat(left, ' '))
      end
    end
  end
  if removed and redis.call('EXISTS', sem) == 0 then
    redis.call('DEL', weights, keepers, kept)
  end
end

-- The weighted count of a purged semaphore's holds.
local function count(sem, weights)
  local used = redis.call('ZCARD', sem)
  local ws = redis.call('HVALS', weights)
  for j = 1, #ws do
    used = used + tonumber(ws[j]) - 1
  end
  return used
end

-- `session` keeps `holder`'s hold (which exists or is being made); `counts` is
-- <p>:sessions:n.
local function keep(sem, keepers, kept, counts, holder, session)
  local list = redis.call('HGET', keepers, holder)
  local joined = false
  if not list then
    redis.call('HSET', keepers, holder, session)
    joined = true
  elseif not string.find(' ' .. list .. ' ', ' ' .. session .. ' ', 1, true) then
    redis.call('HSET', keepers, holder, list .. ' ' .. session)
    joined = true
  end
  if joined then
    redis.call('HINCRBY', counts, session, 1)
  end
  redis.call('ZADD', sem, '+inf', holder)
  redis.call('SADD', kept, session)
end

-- The sessions in `list` keep one hold less (it ended or they let it go).
local function unkeep(counts, list)
  for s in string.gmatch(list, '%S+') do
    if redis.call('HEXISTS', counts, s) == 1 then
      redis.call('HINCRBY', counts, s, -1)
    end
  end
end
