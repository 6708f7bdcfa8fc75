#!lua
-- delete_webhook.lua: delete a webhook with its routing entry, rate-limit state, leases and
-- run of failures (its breaker and parked jobs go at the next breaker tick),
-- only if its record is still the one the caller read (compare-and-set), so the routing entry
-- removed is the one of the tenant it has now; on 0 the caller reads again.
-- KEYS[1] webhooks hash   KEYS[2] routing hash of the tenant in the record as read
-- KEYS[3] rates hash      KEYS[4] the webhook's lease zset   KEYS[5] failing hash
-- KEYS[6] the count of webhooks the queues set covers (control.ensure_known; one less)
-- ARGV[1] webhook id      ARGV[2] the record as read
-- With regions (docs/regions.md), also: KEYS[7] versions hash   KEYS[8] registry stream
-- ARGV[3] this region's name: the delete leaves a tombstone version ("<v> <origin> -") and
-- goes on the registry stream for the other regions ({w, v, o, del = 1})
-- returns: 1 when deleted, 0 when the record differs from ARGV[2] or is gone (nothing changed)
-- include: _version.lua
local id = ARGV[1]
if redis.call('HGET', KEYS[1], id) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[3], id)
redis.call('DEL', KEYS[4])
redis.call('HDEL', KEYS[5], id)
if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('DECR', KEYS[6]) end
if KEYS[7] then
  local v = next_version(KEYS[7], id)
  redis.call('HSET', KEYS[7], id, v .. ' ' .. ARGV[3] .. ' -')
  redis.call('XADD', KEYS[8], '*', 'w', id, 'v', v, 'o', ARGV[3], 'del', '1')
end
return 1
