-- _record.lua: how the scripts read a job's entry in the jobs hash, written once.
-- Not a script of its own: scripts.py puts it in place of the line '-- include: _record.lua'
-- of each script that reads records. The format is documented in dispatcher/queue/codec.py:
--   a record is the meta JSON object, '\n', then the payload bytes exactly as published
--   (nothing after the newline once a delivered job dropped its payload);
--   a job never attempted holds a locator instead, '@<delta>-<seq>' (base 36) then ',<stream>'
--   unless the stream is SHORT_STREAM: its entry id is (the job id's time + delta)-seq (releases
--   before wrote '@<stream> <entry id>', read here too), while its data travels in its
--   ready-stream entry ({j, w, t, e, p}). A locator holds no newline.
-- Only the meta is decoded, so cjson never re-encodes a payload: a script that changes a
-- record writes cjson.encode(meta) .. rest.

-- Whether the jobs hash holds a locator for this job (its data is in its stream entry).
local function is_locator(record)
  return type(record) == 'string' and string.sub(record, 1, 1) == '@'
end

-- The stream a locator names by naming none: the default queue's, at normal priority.
local SHORT_STREAM = 'default'
local ID_ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz'  -- ids.py: Crockford base32

-- The time (ms) in a job id 'job_<core>...': the first ten characters of its core.
local function id_ms(job_id)
  local ms = 0
  for i = 5, 14 do
    ms = ms * 32 + (string.find(ID_ALPHABET, string.sub(job_id, i, i), 1, true) or 1) - 1
  end
  return ms
end

-- A whole number in base 36 (lower case), '-' first when negative; and back.
local B36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local function to_b36(n)
  if n < 0 then return '-' .. to_b36(-n) end
  local digits = ''
  repeat
    local d = n % 36
    digits = string.sub(B36, d + 1, d + 1) .. digits
    n = (n - d) / 36
  until n == 0
  return digits
end

-- The stream and the entry id a locator of this job names, or nil.
local function parse_locator(record, job_id)
  local stream, sid = string.match(record, '^@(%S+) (%S+)$')  -- the form before the short one
  if stream then return stream, sid end
  local sign, delta, seq, rest = string.match(record, '^@(%-?)([0-9a-z]+)%-([0-9a-z]+)(.*)$')
  if not delta then return nil end
  if rest == '' then stream = SHORT_STREAM else stream = string.match(rest, '^,(%S+)$') end
  if not stream then return nil end
  delta = tonumber(delta, 36)
  if sign == '-' then delta = -delta end
  return stream, string.format('%.0f-%.0f', id_ms(job_id) + delta, tonumber(seq, 36))
end

-- The meta of a full record (a table) and the rest ('\n' .. payload), or nil for anything
-- else: no record, a locator, no newline, or meta that is not a JSON object.
local function split_record(record)
  if type(record) ~= 'string' or is_locator(record) then return nil end
  local cut = string.find(record, '\n', 1, true)
  if not cut then return nil end
  local ok, meta = pcall(cjson.decode, string.sub(record, 1, cut - 1))
  if not ok or type(meta) ~= 'table' then return nil end
  return meta, string.sub(record, cut)
end

-- What the jobs hash holds: the locator of a job never attempted, the record of any other.
local function make_locator(stream, sid, job_id)
  local ms, seq = string.match(sid, '^(%d+)%-(%d+)$')
  local locator = '@' .. to_b36(tonumber(ms) - id_ms(job_id)) .. '-' .. to_b36(tonumber(seq))
  if stream ~= SHORT_STREAM then locator = locator .. ',' .. stream end
  return locator
end
local function make_record(meta, payload) return cjson.encode(meta) .. '\n' .. payload end

-- The meta JSON text of a full record, undecoded, or nil (no record, a locator, no newline).
local function record_meta(record)
  if type(record) ~= 'string' or is_locator(record) then return nil end
  local cut = string.find(record, '\n', 1, true)
  return cut and string.sub(record, 1, cut - 1)
end

-- Whether the job (of the jobs hash 'jobs') is still to finish: a locator (queued), or a
-- record neither delivered nor dead. No record (none, or swept) is finished.
local function unfinished(jobs, job_id)
  if not job_id then return false end
  local record = redis.call('HGET', jobs, job_id)
  if not record then return false end
  if is_locator(record) then return true end
  local meta = split_record(record)
  return meta ~= nil and meta.s ~= 'delivered' and meta.s ~= 'dead'
end

-- The FIFO lanes' functions (_lane.lua; it reads records with the functions above): requeue
-- below releases the lane a dropped job heads.
-- include: _lane.lua

-- Put a job waiting without an attempt (waiting for room, held while paused) back at the end
-- of its queue's ready stream ('base' the key base, as in keys.py), its record saying queued
-- and naming the new entry. A record that cannot be read is dead-lettered (to 'dlq') as
-- malformed; one that is gone is dropped; either releases its FIFO lane if it heads one.
local function requeue(jobs, dlq, base, job_id)
  local record = redis.call('HGET', jobs, job_id)
  if not record then return release_lane(base, jobs, dlq, job_id) end
  local meta, rest = split_record(record)
  if meta and type(meta.w) == 'string' and meta.w ~= '' and type(meta.q) == 'string' then
    meta.sid = redis.call('XADD', base .. 'q:' .. meta.q .. ':ready', '*', 'j', job_id,
                          'w', meta.w)
    meta.s = 'queued'
    redis.call('HSET', jobs, job_id, cjson.encode(meta) .. rest)
  else
    local raw = cjson.encode({j = job_id, record = string.sub(record, 1, 200)})
    redis.call('XADD', dlq, '*', 'raw', raw, 'r', 'malformed')
    release_lane(base, jobs, dlq, job_id)
  end
end

-- The 'count' oldest jobs of the zset 'waiting' back in their queues (requeue), and out of it;
-- returns how many.
local function requeue_oldest(waiting, count, jobs, dlq, base)
  local ids = redis.call('ZRANGE', waiting, 0, count - 1)
  for _, job_id in ipairs(ids) do requeue(jobs, dlq, base, job_id) end
  if #ids > 0 then redis.call('ZREM', waiting, unpack(ids)) end
  return #ids
end
