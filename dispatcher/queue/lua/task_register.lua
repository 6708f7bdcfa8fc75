#!lua
-- task_register.lua: record the tasks a daemon runs, and schedule the periodic ones.
-- KEYS[1] tasks hash (name -> JSON)   KEYS[2] tasks:due zset (periodic name -> next run ms)
-- ARGV: triples name, JSON {"q": queue, "every_s": seconds or null}, every_ms (0: not periodic)
-- returns: the number of tasks recorded
-- Each daemon calls this at start and again every minute (taskrunner.py): the record gets
-- "seen" (now, ms), and task_tick.lua enqueues no run of a periodic task that no daemon has
-- registered for REGISTRATION_TTL_MS (its module was removed from every daemon).
-- A periodic task's first run is due now; one already scheduled keeps its time unless that is
-- more than one (new) period away (its period was shortened). A task that is no longer
-- periodic leaves the due zset.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 3 do
  local name, every = ARGV[i], tonumber(ARGV[i + 2])
  local spec = cjson.decode(ARGV[i + 1])
  spec.seen = now
  redis.call('HSET', KEYS[1], name, cjson.encode(spec))
  if every > 0 then
    local due = tonumber(redis.call('ZSCORE', KEYS[2], name))
    if not due or due > now + every then redis.call('ZADD', KEYS[2], now, name) end
  else
    redis.call('ZREM', KEYS[2], name)
  end
end
return #ARGV / 3
