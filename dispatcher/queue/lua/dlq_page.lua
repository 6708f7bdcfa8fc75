#!lua flags=no-writes
-- dlq_page.lua: a page of dead-letter entries with the meta of their jobs' records, never
-- the payloads, so a listing's answer stays small whatever the jobs carry.
-- KEYS[1] dlq stream   KEYS[2] jobs hash
-- ARGV[1] start   ARGV[2] end (XRANGE syntax)   ARGV[3] most entries
-- returns: five values per entry: entry id, job id, reason, raw fields, meta JSON
--          ('' for a missing one; the meta is '' when the record is gone or a locator)
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
local page = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local out = {}
for _, entry in ipairs(page) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  local meta = ''
  if f.j then
    meta = record_meta(redis.call('HGET', KEYS[2], f.j)) or ''
  end
  out[#out + 1] = entry[1]; out[#out + 1] = f.j or ''; out[#out + 1] = f.r or ''
  out[#out + 1] = f.raw or ''; out[#out + 1] = meta
end
return out
