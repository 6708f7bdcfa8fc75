#!lua
-- purge.lua: delete dead-letter entries and the records of their dead jobs.
-- KEYS[1] dlq stream   KEYS[2] jobs hash
-- ARGV pairs: DLQ entry id, job id ('' for a malformed entry, which has no record)
-- returns: number of DLQ entries deleted
-- A record goes only while it is still dead with this very entry (meta.d), so a job replayed
-- since the caller read the page (its entry already gone) keeps its record.
local purged = 0
for i = 1, #ARGV, 2 do
  local entry, job_id = ARGV[i], ARGV[i + 1]
  local removed = redis.call('XDEL', KEYS[1], entry)
  if removed > 0 and job_id ~= '' then
    local record = redis.call('HGET', KEYS[2], job_id)
    local cut = record and string.find(record, '\n', 1, true)
    if cut and string.sub(record, 1, 1) ~= '@' then
      local meta = cjson.decode(string.sub(record, 1, cut - 1))
      if meta.s == 'dead' and meta.d == entry then redis.call('HDEL', KEYS[2], job_id) end
    end
  end
  purged = purged + removed
end
return purged
