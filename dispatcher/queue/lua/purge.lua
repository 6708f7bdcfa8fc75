#!lua
-- purge.lua: delete one bounded page of the oldest dead-letter entries, with the records of
-- their dead jobs.
-- KEYS[1] dlq stream   KEYS[2] jobs hash
-- ARGV[1] end (XRANGE syntax: entries up to it go)   ARGV[2] most entries to delete
-- returns: {entries deleted, last entry deleted ('' none)}
-- A record goes only while it is still dead with this very entry (meta.d), so a job replayed
-- since (its entry then already gone) keeps its record. The payloads are never read out.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
local page = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', ARGV[2])
local purged, last = 0, ''
for _, entry in ipairs(page) do
  local id = entry[1]
  local job_id
  for i = 1, #entry[2], 2 do
    if entry[2][i] == 'j' then job_id = entry[2][i + 1] end
  end
  purged = purged + redis.call('XDEL', KEYS[1], id)
  last = id
  if job_id then
    local meta = split_record(redis.call('HGET', KEYS[2], job_id))
    if meta and meta.s == 'dead' and meta.d == id then
      redis.call('HDEL', KEYS[2], job_id)
    end
  end
end
return {purged, last}
