#!lua
-- task_enqueue.lua: enqueue one run of a registered task, as publish.lua enqueues a job.
-- KEYS[1] tasks hash   KEYS[2] jobs hash
-- KEYS[3], KEYS[4] ready stream and delayed zset of 'maintenance', KEYS[5], KEYS[6] of
--   'analytics' (the task queues, tasks.TASK_QUEUES; normal priority)
-- ARGV[1] job id   ARGV[2] task name   ARGV[3] queue ('' : the one the task registered)
-- KEYS[7] tasks:last hash (name -> job id of its last run, task_tick.lua)
-- ARGV[4] now_ms   ARGV[5] due_ms (0: run now)   ARGV[6] the arguments (a JSON object)
-- ARGV[7] registration TTL (ms)
-- returns: {1, queue} when enqueued, {0, ''} when no daemon registered the name (or the
--   daemons registered others but not it within the TTL: its module was removed everywhere)
-- A task job is stored as a webhook job is (dispatcher/queue/codec.py) with the webhook id
-- 'task' (webhook ids start 'wh_'), tenant '', event type its name, payload its arguments: to
-- run now, inline in its stream entry with a locator in the jobs hash; scheduled, a full
-- record in the jobs hash and its due time in the delayed zset. A run now of a periodic task
-- whose last run is finished becomes its last run: the tick enqueues none while it is
-- unfinished (runs never overlap; one enqueued while a run is unfinished is not held).
-- include: _record.lua
local raw = redis.call('HGET', KEYS[1], ARGV[2])
if not raw then return {0, ''} end
local spec = cjson.decode(raw)
-- Its module was removed: the daemons registered other tasks since, and not this one for the
-- TTL. (While every daemon is down none registers anything, and runs are accepted.)
local newest = 0
for _, other in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, o = pcall(cjson.decode, other)
  if ok and type(o) == 'table' then newest = math.max(newest, tonumber(o.seen) or 0) end
end
if (tonumber(spec.seen) or 0) < newest - tonumber(ARGV[7]) then return {0, ''} end
local queue = ARGV[3]
if queue == '' then queue = spec.q end
local ready, delayed = KEYS[3], KEYS[4]
if queue == 'analytics' then ready, delayed = KEYS[5], KEYS[6] end
local job_id, now_ms, due_ms = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
if due_ms > now_ms then
  local meta = {w = 'task', t = '', e = ARGV[2], q = queue, s = 'scheduled', a = 0, k = 0,
                c = now_ms, n = due_ms}
  redis.call('HSET', KEYS[2], job_id, make_record(meta, ARGV[6]))
  redis.call('ZADD', delayed, due_ms, job_id)
else
  local sid = redis.call('XADD', ready, '*', 'j', job_id, 'w', 'task', 't', '', 'e', ARGV[2],
                         'p', ARGV[6])
  redis.call('HSET', KEYS[2], job_id, make_locator(queue, sid, job_id))
  local periodic = (tonumber(spec.every_s) or 0) > 0
  if periodic and not unfinished(KEYS[2], redis.call('HGET', KEYS[7], ARGV[2])) then
    redis.call('HSET', KEYS[7], ARGV[2], job_id)
  end
end
return {1, queue}
