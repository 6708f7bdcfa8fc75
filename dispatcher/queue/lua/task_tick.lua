#!lua
-- task_tick.lua: enqueue one run of each periodic task that is due, advancing its next run in
-- the same step, so however many daemons tick, each period enqueues exactly one run.
-- KEYS[1] tasks hash   KEYS[2] tasks:due zset   KEYS[3] jobs hash
-- KEYS[4] ready stream of 'maintenance'   KEYS[5] ready stream of 'analytics'
-- ARGV[1] job id prefix (the n-th run enqueued here is prefix .. n)   ARGV[2] most runs
-- returns: {name, job id, ...} enqueued
-- The next run is one period after the one due, or one period from now when that has passed
-- too (a deployment that was down runs a missed task once, not once per missed period). A
-- name no daemon registers as periodic any more leaves the zset. Each run is an ordinary task
-- job (task_enqueue.lua's form) with empty arguments: at least once, reclaimed from a daemon
-- that dies running it.
-- include: _record.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE', 'WITHSCORES', 'LIMIT', 0,
                       ARGV[2])
local out, n = {}, 0
for i = 1, #due, 2 do
  local name, at = due[i], tonumber(due[i + 1])
  local raw = redis.call('HGET', KEYS[1], name)
  local ok, spec = pcall(cjson.decode, raw or '')
  local every = ok and type(spec) == 'table' and tonumber(spec.every_s)
  if not every or every <= 0 then
    redis.call('ZREM', KEYS[2], name)
  else
    local next_at = at + math.floor(every * 1000)
    if next_at <= now then next_at = now + math.floor(every * 1000) end
    redis.call('ZADD', KEYS[2], next_at, name)
    n = n + 1
    local job_id = ARGV[1] .. n
    local queue = spec.q == 'analytics' and 'analytics' or 'maintenance'
    local ready = queue == 'analytics' and KEYS[5] or KEYS[4]
    local sid = redis.call('XADD', ready, '*', 'j', job_id, 'w', 'task', 't', '', 'e', name,
                           'p', '{}')
    redis.call('HSET', KEYS[3], job_id, make_locator(queue, sid, job_id))
    out[#out + 1] = name; out[#out + 1] = job_id
  end
end
return out
