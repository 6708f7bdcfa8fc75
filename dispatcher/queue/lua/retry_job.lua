#!lua
-- retry_job.lua: send a scheduled job (failed, waiting in the delayed zset for its next
-- attempt) or a delivered one now, as a new series of attempts: a new entry at the end of its
-- ready stream, attempts and stalls reset, its history kept (as replay.lua does for a dead
-- job, which queue/resend.py replays through replay.lua instead).
-- A scheduled job leaves the delayed zset. A delivered job takes its payload back from
-- KEYS[5] (kept jobs.payload_retention_s by settle.lua) and leaves the done zset, so the
-- sweep does not forget it while it is sent again; a FIFO job ('ol', _lane.lua) joins the back
-- of its lane, as replay.lua puts one.
-- KEYS[1] jobs hash   KEYS[2] delayed zset   KEYS[3] ready stream (of the stream ARGV[2])
-- KEYS[4] done zset   KEYS[5] the job's payload key (keys.py payload)   KEYS[6] webhooks hash
-- ARGV[1] job id   ARGV[2] the stream the caller read in the job's record
-- returns: {'moved'} or {why}: 'not_found' (no record), 'queued' (a locator, or a record that
--   is queued or active), 'not_scheduled' and the record's state (dead: the caller read an
--   older state), 'not_due' and what it waits for (a scheduled job that was deferred
--   without an attempt: rate_limit, max_in_flight, endpoint_capacity, breaker; it goes when
--   that frees, and is left as it is; 'paused': held while its webhook is paused;
--   'deliver_at': never attempted, waiting for its deliver_at time or a task's next run),
--   'payload_gone' (delivered, its payload no longer kept), 'webhook_deleted' or
--   'webhook_disabled' (delivered: it would die at once, unsent, as replay.lua refuses it),
--   'stream' (its stream is not ARGV[2]: read it again),
--   'malformed'.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
-- include: _lane.lua
local job_id = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local record = redis.call('HGET', KEYS[1], job_id)
if not record then return {'not_found'} end
if is_locator(record) then return {'queued'} end
local meta, rest = split_record(record)
if not meta or type(meta.w) ~= 'string' or meta.w == '' then return {'malformed'} end
if meta.s == 'queued' or meta.s == 'active' then return {'queued'} end
if meta.s == 'delivered' then
  if meta.w ~= 'task' then
    local hook = redis.call('HGET', KEYS[6], meta.w)
    if not hook then return {'webhook_deleted'} end
    local ok, decoded = pcall(cjson.decode, hook)
    if ok and type(decoded) == 'table' and decoded.enabled == false then
      return {'webhook_disabled'}
    end
  end
  local payload = redis.call('GET', KEYS[5])
  if not payload then return {'payload_gone'} end
  if meta.q ~= ARGV[2] then return {'stream'} end
  redis.call('ZREM', KEYS[4], job_id)
  redis.call('DEL', KEYS[5])
  meta.sid = nil; meta.wr = nil
  local base = KEYS[1]:sub(1, -5)  -- '<prefix>:{tag}:' of '<prefix>:{tag}:jobs'
  if type(meta.ol) ~= 'string' or join_lane(base, meta.ol, job_id, meta, now_ms()) then
    meta.sid = redis.call('XADD', KEYS[3], '*', 'j', job_id, 'w', meta.w)
  end
  meta.s = 'queued'; meta.a = 0; meta.k = 0
  meta.f = nil; meta.n = nil; meta.d = nil; meta.r = nil
  redis.call('HSET', KEYS[1], job_id, cjson.encode(meta) .. '\n' .. payload)
  return {'moved'}
end
if meta.s ~= 'scheduled' then return {'not_scheduled', tostring(meta.s)} end
if type(meta.wr) == 'string' then return {'not_due', meta.wr} end
if (tonumber(meta.a) or 0) == 0 then return {'not_due', 'deliver_at'} end
if meta.q ~= ARGV[2] then return {'stream'} end
if redis.call('ZREM', KEYS[2], job_id) == 0 then return {'not_due', ''} end
meta.sid = redis.call('XADD', KEYS[3], '*', 'j', job_id, 'w', meta.w)
meta.s = 'queued'; meta.a = 0; meta.k = 0
meta.n = nil
redis.call('HSET', KEYS[1], job_id, cjson.encode(meta) .. rest)
return {'moved'}
