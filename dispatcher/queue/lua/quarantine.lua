#!lua
-- quarantine.lua: dead-letter ready entries that cannot be delivered as they are.
-- KEYS[1] ready stream   KEYS[2] dlq stream
-- ARGV[1] group   ARGV[2] reason ('malformed')   then pairs: sid, the entry's raw fields as JSON
-- returns: number of entries moved
-- The raw fields are kept in the DLQ entry, so an operator can see what arrived.
local sids = {}
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 'raw', ARGV[i + 1], 'r', ARGV[2], 'sid', ARGV[i])
  sids[#sids + 1] = ARGV[i]
end
if #sids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(sids))
  redis.call('XDEL', KEYS[1], unpack(sids))
end
return #sids
