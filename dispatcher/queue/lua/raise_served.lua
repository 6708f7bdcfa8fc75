#!lua
-- raise_served.lua: make sure shards 0..ARGV[1]-1 are served here (layout ``served``), never
-- lowering it, and leaving ``shards`` (where new webhooks go) as it is: another region's
-- webhook copied here lives in its id's shard, which this Redis may not have served yet.
-- KEYS[1] layout hash   ARGV[1] the number of shards that must be served
-- returns: served now
local wanted = tonumber(ARGV[1])
local served = tonumber(redis.call('HGET', KEYS[1], 'served')) or 1
if wanted > served then
  redis.call('HSET', KEYS[1], 'served', wanted)
  served = wanted
end
return served
