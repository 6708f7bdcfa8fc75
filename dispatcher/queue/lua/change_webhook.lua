#!lua
-- change_webhook.lua: replace a webhook's record, and its entry in its tenant's routing hash,
-- only if the record is still the one the caller read (compare-and-set). The caller computes
-- the new record (validation, secret rotation) and, on 0, reads again and recomputes: a change
-- made in between (a 410's auto-disable, a rotation, a PATCH, a delete) is never undone.
-- KEYS[1] webhooks hash   KEYS[2] routing hash of the tenant in the record as read
-- KEYS[3] routing hash of the tenant in the new record (KEYS[2] again when it is unchanged)
-- KEYS[4] the set of queue names webhooks name (the new record's queue is added)
-- ARGV[1] webhook id   ARGV[2] the record as read   ARGV[3] the new record
-- ARGV[4] the new record's routing JSON   ARGV[5] the new record's queue
-- With regions (docs/regions.md), also: KEYS[5] versions hash   KEYS[6] registry stream
-- ARGV[6] this region's name: the write gets version max(previous + 1, TIME ms) from this
-- region, and goes on the registry stream for the other regions ({w, v, o, rec})
-- ARGV[7] '1' when an operator enabled the webhook (a fresh start: its own region closes its
-- breaker, webhooks.after_change), noted on the entry as fresh = 1; '' otherwise
-- returns: 1 when written, 0 when the record differs from ARGV[2] or is gone (nothing written)
-- include: _version.lua
local id = ARGV[1]
if redis.call('HGET', KEYS[1], id) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], id, ARGV[3])
if KEYS[2] ~= KEYS[3] then redis.call('HDEL', KEYS[2], id) end
redis.call('HSET', KEYS[3], id, ARGV[4])
redis.call('SADD', KEYS[4], ARGV[5])
if KEYS[5] then
  local v = next_version(KEYS[5], id)
  redis.call('HSET', KEYS[5], id, v .. ' ' .. ARGV[6])
  if ARGV[7] == '1' then
    redis.call('XADD', KEYS[6], '*', 'w', id, 'v', v, 'o', ARGV[6], 'rec', ARGV[3], 'fresh', '1')
  else
    redis.call('XADD', KEYS[6], '*', 'w', id, 'v', v, 'o', ARGV[6], 'rec', ARGV[3])
  end
end
return 1
