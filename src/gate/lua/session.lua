-- Extends a session's lease (SPEC §7): every hold the session keeps lasts as long as it does.
-- Sent every renew interval (TTL/3), and in front of a new session's first acquire.
--
-- KEYS[1]  <p>:sessions
-- KEYS[2]  <p>:sessions:n
-- ARGV[1]  the session
-- ARGV[2]  lease TTL in ms
-- ARGV[3]  1 when the session was registered before, 0 for a new one
--
-- Returns {1, the number of holds the session keeps} when its lease ran (or it is new and now
-- registered), {0, 0} when a registered session had ended: it is not revived (its holds are
-- gone or going), its holder goes on under a new session. Ended sessions are dropped (an
-- unknown session has ended). The keys have no expiry: an acquire extends a lease without a
-- heartbeat, so an expiry set here could end a live session.
local sessions, counts = KEYS[1], KEYS[2]
local session, ttl, registered = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local now = clock()
if registered and not alive(sessions, session, now) then
  return {0, 0}
end
drop_until(sessions, counts, now)
redis.call('ZADD', sessions, now + ttl, session)
return {1, tonumber(redis.call('HGET', counts, session) or '0')}
