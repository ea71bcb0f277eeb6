-- The weighted count of a semaphore's holds (SPEC §7), after dropping those that are over.
--
-- KEYS[1]     <p>:sessions
-- KEYS[2..5]  the semaphore: <s>, <s>:w, <s>:k, <s>:s (prelude.lua)
local sessions, sem, weights, keepers, kept = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
purge(sem, weights, keepers, kept, sessions, clock())
return count(sem, weights)
