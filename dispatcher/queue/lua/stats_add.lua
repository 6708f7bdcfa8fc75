#!lua
-- stats_add.lua: add a worker's per-webhook delivery counts to their minutes (queue/stats.py).
-- KEYS[1] pending zset (W:M -> M)
-- then per group g (1, 2, ...): KEYS[2g] the minute's hash   KEYS[2g+1] its hour's hash
-- ARGV[1] minute TTL (s)   ARGV[2] hour TTL (s)
-- ARGV[3] oldest minute kept: pending members of earlier minutes are trimmed (expired)
-- then per group: member (W:M), minute, n, and n pairs of field, count
-- A minute already rolled into its hour (field r) adds its late counts to the hour as well,
-- so the hour misses none and counts none twice; any other minute is marked pending.
-- returns: the number of groups added
-- include: _stats_keys.lua
local wrong = check_stats_keys()
if wrong then
  return redis.error_reply(wrong)
end
local pending = KEYS[1]
local minute_ttl = ARGV[1]
local hour_ttl = ARGV[2]
local at = 4
local g = 0
while at <= #ARGV do
  g = g + 1
  local minute_key, hour_key = KEYS[2 * g], KEYS[2 * g + 1]
  local member, minute, n = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  at = at + 3
  local rolled = redis.call('HEXISTS', minute_key, 'r') == 1
  for i = at, at + 2 * n - 1, 2 do
    redis.call('HINCRBY', minute_key, ARGV[i], ARGV[i + 1])
    if rolled then
      redis.call('HINCRBY', hour_key, ARGV[i], ARGV[i + 1])
    end
  end
  at = at + 2 * n
  redis.call('EXPIRE', minute_key, minute_ttl)
  if rolled then
    redis.call('EXPIRE', hour_key, hour_ttl)
  else
    redis.call('ZADD', pending, minute, member)
  end
end
redis.call('ZREMRANGEBYSCORE', pending, '-inf', '(' .. ARGV[3])
return g
