-- _record.lua: how the scripts read a job's entry in the jobs hash, written once.
-- Not a script of its own: scripts.py puts it in place of the line '-- include: _record.lua'
-- of each script that reads records. The format is documented in dispatcher/queue/codec.py:
--   a record is the meta JSON object, '\n', then the payload bytes exactly as published
--   (nothing after the newline once a delivered job dropped its payload);
--   a job never attempted holds a locator instead, '@<stream> <entry id>' (no newline), while
--   its data travels in its ready-stream entry ({j, w, t, e, p}).
-- Only the meta is decoded, so cjson never re-encodes a payload: a script that changes a
-- record writes cjson.encode(meta) .. rest.

-- Whether the jobs hash holds a locator for this job (its data is in its stream entry).
local function is_locator(record)
  return type(record) == 'string' and string.sub(record, 1, 1) == '@'
end

-- The stream and the entry id a locator names, or nil.
local function parse_locator(record)
  return string.match(record, '^@(%S+) (%S+)$')
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
local function make_locator(stream, sid) return '@' .. stream .. ' ' .. sid end
local function make_record(meta, payload) return cjson.encode(meta) .. '\n' .. payload end

-- The meta JSON text of a full record, undecoded, or nil (no record, a locator, no newline).
local function record_meta(record)
  if type(record) ~= 'string' or is_locator(record) then return nil end
  local cut = string.find(record, '\n', 1, true)
  return cut and string.sub(record, 1, cut - 1)
end
