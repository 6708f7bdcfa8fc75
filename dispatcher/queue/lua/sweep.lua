#!lua
-- sweep.lua: forget finished job records older than the retention.
-- KEYS[1] done zset   KEYS[2] jobs hash
-- ARGV[1] cutoff ms (records finished at or before it go)   ARGV[2] most records per call
-- returns: number of records removed
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
if #ids > 0 then
  redis.call('HDEL', KEYS[2], unpack(ids))
  redis.call('ZREM', KEYS[1], unpack(ids))
end
return #ids
