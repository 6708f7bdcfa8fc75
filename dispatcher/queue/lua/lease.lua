#!lua
-- lease.lua: a lane starts an attempt admitted under its webhook's max_in_flight; the lease
-- taken at admission (admit.lua) now runs from here, so its expiry measures the attempt and
-- not the time the job waited for a lane.
-- KEYS[1] the webhook's lease zset ('<job id>|<holder>' -> lease expiry ms)
-- ARGV[1] the lease's member   ARGV[2] lease lifetime ms   ARGV[3] the webhook's max_in_flight
-- KEYS[2], when given: the claim's ready stream; ARGV[4] group   ARGV[5] the claim's sid
--   ARGV[6] its claim token   ARGV[7] the consumer (the member's holder)
-- returns: 1 when the lease is held from now (renewed, or taken again within the cap after it
--   expired), 0 when it expired and the cap is full, or the claim is stale: the attempt must
--   not start
--
-- A stale claim (taken over while its worker was frozen) is refused: its worker may hold the
-- job again under a newer claim, whose lease has the same member, and the old claim's attempt
-- must not start beside the new one under that one lease.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, member = KEYS[1], ARGV[1]
local lifetime, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
if KEYS[2] then
  local p = redis.call('XPENDING', KEYS[2], ARGV[4], ARGV[5], ARGV[5], 1, ARGV[7])
  if not (p[1] and tostring(p[1][4]) == ARGV[6]) then return 0 end
end
redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)  -- leases of dead holders
if redis.call('ZSCORE', lease, member) or redis.call('ZCARD', lease) < cap then
  redis.call('ZADD', lease, now + lifetime, member)
  return 1
end
return 0
