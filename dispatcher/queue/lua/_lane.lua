-- _lane.lua: a FIFO webhook's lanes (keys.py ``lane``), written once for the scripts that end
-- or restart a lane's job. Not a script of its own: included after _record.lua (it uses it).
-- A lane is a list of the ids of its unfinished jobs in publish order; only its first, the
-- head, sits in a ready stream or a delayed zset, so at most one job of a lane is ever claimed.
-- The others are full records (state queued or scheduled, 'wr' = 'ordering', 'ol' the lane).

-- The lane a finished job's record names, or nil. Most records name none: one plain search
-- of the record says so without copying or decoding anything (in the meta, '"ol":"' can only
-- be the key itself, as a quote inside a JSON string is escaped; the payload may hold it too,
-- hence the decode that follows a hit).
local function lane_of(record)
  if not string.find(record, '"ol":"', 1, true) then return nil end
  local decoded = split_record(record)
  return decoded and type(decoded.ol) == 'string' and decoded.ol or nil
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

-- The lane's head ``job_id`` is finished (delivered or dead): pop it and queue the next job
-- still unfinished. Jobs whose record is gone or finished are popped too; an unreadable one
-- is dead-lettered as malformed (KEYS of the caller: ``jobs`` hash, ``dlq`` stream), so a bad
-- record never blocks its lane. Nothing happens when ``job_id`` is not the head (a repeat).
local function advance_lane(base, jobs, dlq, lane, job_id, now_ms)
  if redis.call('LINDEX', lane, 0) ~= job_id then return end
  redis.call('LPOP', lane)
  while true do
    local next_id = redis.call('LINDEX', lane, 0)
    if not next_id then return end
    local record = redis.call('HGET', jobs, next_id)
    local meta, rest = split_record(record)
    if meta and meta.s ~= 'delivered' and meta.s ~= 'dead' and type(meta.q) == 'string'
       and type(meta.w) == 'string' then
      redis.call('HSET', jobs, next_id, cjson.encode(enqueue_head(base, next_id, meta, now_ms))
                                        .. rest)
      return
    end
    if record and not meta then
      local raw = cjson.encode({j = next_id, record = string.sub(record, 1, 200)})
      redis.call('XADD', dlq, '*', 'raw', raw, 'r', 'malformed')
    end
    redis.call('LPOP', lane)
  end
end

-- Put a job at the back of its lane (publish, replay): returns true when it is the head now
-- (the caller queues it), false when it waits behind one (its meta says so).
local function join_lane(lane, job_id, meta)
  meta.ol = lane
  if redis.call('RPUSH', lane, job_id) == 1 then return true end
  meta.wr = 'ordering'
  return false
end
