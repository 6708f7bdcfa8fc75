-- _lane.lua: a FIFO webhook's lanes (keys.py ``lane``), written once for the scripts that end
-- or restart a lane's job. Not a script of its own: _record.lua includes it (its requeue
-- releases lanes), so every script that reads records has it; naming it again is harmless
-- (scripts.py puts each file in once).
-- A lane is a list of the ids of its unfinished jobs in publish order; only its first, the
-- head, sits in a ready stream or a delayed zset, so at most one job of a lane is ever claimed.
-- The others are full records (state queued or scheduled, 'wr' = 'ordering', 'ol' the lane).
-- Beside the lanes, each shard keeps (keys.py ``lane_heads``, ``lane_since``, ``ordering``):
--   base..'lanes:heads'   hash  head job id -> its lane: a head whose record is unreadable or
--                               gone still finds its lane (release_lane), so no lane sticks;
--   base..'lanes:since'   zset  head job id -> since when its lane waits for it (ms: when it
--                               became the head, or its due time if later);
--   base..'lanes:waiting' hash  webhook id -> its jobs waiting behind a head (the sum over its
--                               lanes of length - 1), for the status without a scan.
-- Every push onto a lane goes through lane_joined and every pop through advance_lane, which
-- keep the three in step.

-- The lane a finished job's record names, or nil. Most records name none: one plain search
-- of the record says so without copying or decoding anything (in the meta, '"ol":"' can only
-- be the key itself, as a quote inside a JSON string is escaped; the payload may hold it too,
-- hence the decode that follows a hit).
local function lane_of(record)
  if not string.find(record, '"ol":"', 1, true) then return nil end
  local decoded = split_record(record)
  return decoded and type(decoded.ol) == 'string' and decoded.ol or nil
end

-- Add ``delta`` to the count of jobs waiting behind the heads of the webhook of ``lane``
-- (base..'lane:'..webhook id, then ':'..the ordering key's length..':'..key when it has one);
-- a count that reaches 0 leaves the hash.
local function count_waiting(base, lane, delta)
  local webhook_id = string.match(lane, '^lane:([^:]+)', #base + 1)
  if delta == 0 or not webhook_id then return end
  if redis.call('HINCRBY', base .. 'lanes:waiting', webhook_id, delta) <= 0 then
    redis.call('HDEL', base .. 'lanes:waiting', webhook_id)
  end
end

-- ``job_id`` was pushed onto ``lane``, which is now ``len`` long: the head (len 1) is noted
-- with since when its lane waits for it, any other counts as waiting.
local function lane_joined(base, lane, job_id, len, since_ms)
  if len == 1 then
    redis.call('HSET', base .. 'lanes:heads', job_id, lane)
    redis.call('ZADD', base .. 'lanes:since', since_ms, job_id)
  else
    count_waiting(base, lane, 1)
  end
end

-- Queue a lane job that just became its head: into its ready stream (base .. 'q:' .. stream ..
-- ':ready'), or, scheduled for later (its 'n'), its delayed zset. Returns the meta to write.
local function enqueue_head(base, job_id, meta, now_ms)
  meta.wr = nil
  local due = tonumber(meta.n)
  if due and due > now_ms then
    meta.s = 'scheduled'
    redis.call('ZADD', base .. 'q:' .. meta.q .. ':delayed', due, job_id)
  else
    meta.s = 'queued'; meta.n = nil
    meta.sid = redis.call('XADD', base .. 'q:' .. meta.q .. ':ready', '*', 'j', job_id,
                          'w', meta.w)
  end
  return meta
end

-- The lane's head ``job_id`` is finished (delivered or dead, or gone): pop it and queue the
-- next job still unfinished. Jobs whose record is gone or finished are popped too; an
-- unreadable one (or one naming no queue or webhook) is dead-lettered as malformed (``jobs``
-- hash, ``dlq`` stream), so a bad record never blocks its lane nor goes unseen.
-- Nothing happens when ``job_id`` is not the head (a repeat).
local function advance_lane(base, jobs, dlq, lane, job_id, now_ms)
  if redis.call('LINDEX', lane, 0) ~= job_id then return end
  local before = redis.call('LLEN', lane)
  redis.call('LPOP', lane)
  redis.call('HDEL', base .. 'lanes:heads', job_id)
  redis.call('ZREM', base .. 'lanes:since', job_id)
  while true do
    local next_id = redis.call('LINDEX', lane, 0)
    if not next_id then break end
    local record = redis.call('HGET', jobs, next_id)
    local meta, rest = split_record(record)
    if meta and meta.s ~= 'delivered' and meta.s ~= 'dead' and type(meta.q) == 'string'
       and type(meta.w) == 'string' then
      local since = math.max(now_ms, tonumber(meta.n) or 0)
      redis.call('HSET', jobs, next_id, cjson.encode(enqueue_head(base, next_id, meta, now_ms))
                                        .. rest)
      redis.call('HSET', base .. 'lanes:heads', next_id, lane)
      redis.call('ZADD', base .. 'lanes:since', since, next_id)
      break
    end
    if record and not (meta and (meta.s == 'delivered' or meta.s == 'dead')) then
      -- unreadable, or unfinished but naming no queue or webhook: never dropped unseen
      local raw = cjson.encode({j = next_id, record = string.sub(record, 1, 200)})
      redis.call('XADD', dlq, '*', 'raw', raw, 'r', 'malformed')
    end
    redis.call('LPOP', lane)
  end
  count_waiting(base, lane, math.max(redis.call('LLEN', lane) - 1, 0) - (before - 1))
end

-- Put a job at the back of its lane (replay): returns true when it is the head now (the
-- caller queues it), false when it waits behind one (its meta says so).
local function join_lane(base, lane, job_id, meta, now_ms)
  meta.ol = lane
  local len = redis.call('RPUSH', lane, job_id)
  lane_joined(base, lane, job_id, len, now_ms)
  if len == 1 then return true end
  meta.wr = 'ordering'
  return false
end

-- A job leaves without an outcome that names its lane (its record unreadable or gone, so
-- dead-lettered as malformed or dropped): if it is a lane's head, the lane moves on as
-- advance_lane does (``now_ms`` nil: Redis's clock). Costs one HGET for any other job.
local function release_lane(base, jobs, dlq, job_id, now_ms)
  local lane = job_id and redis.call('HGET', base .. 'lanes:heads', job_id)
  if not lane then return end
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  advance_lane(base, jobs, dlq, lane, job_id, now_ms)
end
