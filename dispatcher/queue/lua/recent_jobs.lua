#!lua flags=no-writes
-- recent_jobs.lua: a webhook's most recent finished and dead jobs, found by a bounded read of
-- its shard (there is no index by webhook: keeping one would cost every delivery writes).
-- KEYS[1] done zset (delivered jobs by finish time)   KEYS[2] jobs hash   KEYS[3] dlq stream
-- ARGV[1] webhook id   ARGV[2], ARGV[3] the ranks (ZREVRANGE: 0 the newest) of the delivered
-- jobs to read   ARGV[4] most DLQ entries to read, the newest (0: none)
-- ARGV[5] most bytes of records to read (a dead job's record holds its payload)
-- returns: {records read, bytes read, job id, meta JSON, job id, meta JSON, ...}: the
--   webhook's jobs among those read, newest first in each part; the read stops once
--   ARGV[5] bytes of records were read (the record that passed it included). Python calls it in slices (queue/recent.py), so Redis
--   is never held for long.
-- Only the meta of a record is returned (never a payload). The webhook is matched on the
-- meta's text, '"w":"<id>"' (cjson writes it so; ids need no escaping), and checked again in
-- Python; a quote inside a string value is always escaped, so it cannot match there.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
local wanted = '"w":"' .. ARGV[1] .. '"'
local budget = tonumber(ARGV[5])
local out = {0, 0}
local read, bytes = 0, 0

local function look(job_id)
  local record = redis.call('HGET', KEYS[2], job_id)
  read = read + 1
  if not record then return end
  budget = budget - #record
  bytes = bytes + #record
  local meta = record_meta(record)
  if meta and string.find(meta, wanted, 1, true) then
    out[#out + 1] = job_id; out[#out + 1] = meta
  end
end

for _, job_id in ipairs(redis.call('ZREVRANGE', KEYS[1], ARGV[2], ARGV[3])) do
  if budget <= 0 then break end
  look(job_id)
end
if tonumber(ARGV[4]) > 0 then
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[4])) do
    if budget <= 0 then break end
    local f = {}
    for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
    if f.j then look(f.j) end
  end
end
out[1] = read
out[2] = bytes
return out
