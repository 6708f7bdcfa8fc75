#!lua
-- task_tick.lua: enqueue one run of each periodic task that is due, advancing its next run in
-- the same step, so however many daemons tick, each period enqueues at most one run.
-- KEYS[1] tasks hash   KEYS[2] tasks:due zset   KEYS[3] jobs hash   KEYS[4] tasks:last hash
--   (name -> job id of its last run: a periodic one, or one enqueued by hand)
-- KEYS[5] ready stream of 'maintenance'   KEYS[6] ready stream of 'analytics'
-- ARGV[1] job id prefix (the n-th run enqueued here is prefix .. n)   ARGV[2] most runs
-- ARGV[3] registration TTL (ms)   ARGV[4] what ends each job id: '~' and the region of this
--   Redis, or '' without regions (absent: '')
-- returns: {name, job id, ...} enqueued, then {name, ...} skipped (the last run unfinished)
-- The next run is one period after the one due, or one period from now when that has passed
-- too (a deployment that was down runs a missed task once, not once per missed period).
-- Runs never overlap: while the last run is unfinished (queued, running, waiting for a retry;
-- or held by a daemon that died, until the stall reclaim takes it over; a run enqueued by hand
-- counts, task_enqueue.lua), the period passes without a new one. A task no daemon registers as periodic any more (not in the hash, no
-- every_s, or not registered again within the TTL) leaves the zset. Each run is an ordinary
-- task job (task_enqueue.lua's form) with empty arguments.
-- include: _record.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE', 'WITHSCORES', 'LIMIT', 0,
                       ARGV[2])
local ttl = tonumber(ARGV[3])

local out, skipped, n = {}, {}, 0
for i = 1, #due, 2 do
  local name, at = due[i], tonumber(due[i + 1])
  local raw = redis.call('HGET', KEYS[1], name)
  local ok, spec = pcall(cjson.decode, raw or '')
  local every = ok and type(spec) == 'table' and tonumber(spec.every_s)
  if not every or every <= 0 or (tonumber(spec.seen) or 0) < now - ttl then
    redis.call('ZREM', KEYS[2], name)
  else
    local next_at = at + math.floor(every * 1000)
    if next_at <= now then next_at = now + math.floor(every * 1000) end
    redis.call('ZADD', KEYS[2], next_at, name)
    if unfinished(KEYS[3], redis.call('HGET', KEYS[4], name)) then
      skipped[#skipped + 1] = name
    else
      n = n + 1
      local job_id = ARGV[1] .. n .. (ARGV[4] or '')
      local queue = spec.q == 'analytics' and 'analytics' or 'maintenance'
      local ready = queue == 'analytics' and KEYS[6] or KEYS[5]
      local sid = redis.call('XADD', ready, '*', 'j', job_id, 'w', 'task', 't', '', 'e', name,
                             'p', '{}')
      redis.call('HSET', KEYS[3], job_id, make_locator(queue, sid, job_id))
      redis.call('HSET', KEYS[4], name, job_id)
      out[#out + 1] = name; out[#out + 1] = job_id
    end
  end
end
return {out, skipped}
