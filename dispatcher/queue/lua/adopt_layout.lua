#!lua
-- adopt_layout.lua: record the shard count a process starts with (redis.shards), keeping
-- ``served`` the most there ever were, in one step: two processes starting at once with
-- different counts can no longer lower it (a read then a write could), so no shard that may
-- hold work drops out of anyone's fan-out.
-- KEYS[1] layout hash (``shards``, ``served``)
-- ARGV[1] this process's shard count (>= 1)
-- returns: {shards before (ARGV[1] on a new Redis), served now}
local shards = tonumber(ARGV[1])
local raw = redis.call('HMGET', KEYS[1], 'shards', 'served')
local before = tonumber(raw[1])
local served = math.max(shards, before or 1, tonumber(raw[2]) or 1)
redis.call('HSET', KEYS[1], 'shards', shards, 'served', served)
return {before or shards, served}
