#!lua
-- stats_roll.lua: roll pending minutes of webhooks' delivery counts into their hours.
-- KEYS[1] pending zset (W:M -> M)
-- then per member g (1, 2, ...): KEYS[2g] the minute's hash   KEYS[2g+1] its hour's hash
-- ARGV[1] hour TTL (s)   ARGV[1 + g] member g (W:M)
-- Each minute is added to its hour once: it is marked rolled (field r) in the same step, so
-- running twice, or two callers at once, adds nothing more. A minute gone (expired) is
-- dropped from pending.
-- returns: the number of minutes rolled
-- include: _stats_keys.lua
local wrong = check_stats_keys()
if wrong then
  return redis.error_reply(wrong)
end
local pending = KEYS[1]
local rolled = 0
for g = 1, #ARGV - 1 do
  local minute_key, hour_key = KEYS[2 * g], KEYS[2 * g + 1]
  if redis.call('HEXISTS', minute_key, 'r') == 0 then
    local fields = redis.call('HGETALL', minute_key)
    if #fields > 0 then
      for i = 1, #fields, 2 do
        redis.call('HINCRBY', hour_key, fields[i], fields[i + 1])
      end
      redis.call('HSET', minute_key, 'r', 1)
      redis.call('EXPIRE', hour_key, ARGV[1])
      rolled = rolled + 1
    end
  end
  redis.call('ZREM', pending, ARGV[1 + g])
end
return rolled
