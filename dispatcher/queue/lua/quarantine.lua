#!lua
-- quarantine.lua: dead-letter ready entries that cannot be delivered as they are.
-- KEYS[1] ready stream   KEYS[2] dlq stream   KEYS[3] jobs hash
-- ARGV[1] group   ARGV[2] reason ('malformed')   then pairs: sid, the entry's raw fields as JSON
-- returns: number of entries moved
-- The raw fields are kept in the DLQ entry, so an operator can see what arrived. A job that
-- heads a FIFO lane (the entry's 'j') releases it (_lane.lua's release_lane), so a head whose
-- record is gone or unreadable never blocks its lane.
-- include: _record.lua
local sids, heads = {}, {}
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 'raw', ARGV[i + 1], 'r', ARGV[2], 'sid', ARGV[i])
  sids[#sids + 1] = ARGV[i]
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  local fields = entry and entry[2] or {}
  for k = 1, #fields, 2 do
    if fields[k] == 'j' then heads[#heads + 1] = fields[k + 1] end
  end
end
if #sids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(sids))
  redis.call('XDEL', KEYS[1], unpack(sids))
end
local base = KEYS[3]:sub(1, -5)
for _, job_id in ipairs(heads) do release_lane(base, KEYS[3], KEYS[2], job_id) end
return #sids
