#!lua
-- lease.lua: a lane starts an attempt admitted under its webhook's max_in_flight; the lease
-- taken at admission (admit.lua) now runs from here, so its expiry measures the attempt and
-- not the time the job waited for a lane.
-- KEYS[1] the webhook's lease zset ('<job id>|<holder>' -> lease expiry ms)
-- ARGV[1] the lease's member   ARGV[2] lease lifetime ms   ARGV[3] the webhook's max_in_flight
-- returns: 1 when the lease is held from now (renewed, or taken again within the cap after it
--   expired), 0 when it expired and the cap is full: the attempt must not start
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, member = KEYS[1], ARGV[1]
local lifetime, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)  -- leases of dead holders
if redis.call('ZSCORE', lease, member) or redis.call('ZCARD', lease) < cap then
  redis.call('ZADD', lease, now + lifetime, member)
  return 1
end
return 0
