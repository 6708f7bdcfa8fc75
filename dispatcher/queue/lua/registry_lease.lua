#!lua
-- registry_lease.lua: take or renew the lease of replicating from one region into this shard
-- (dispatcher/replicator.py), so one process of the region does it at a time.
-- KEYS[1] the lease (registry:lock:S)   ARGV[1] this process's token   ARGV[2] its TTL in ms
-- (0: give it up, if this process holds it)
-- returns: 1 when this process holds it now, 0 when another one does (or it was given up)
if ARGV[2] == '0' then
  if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
