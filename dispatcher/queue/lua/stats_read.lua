#!lua flags=no-writes
-- stats_read.lua: read a webhook's minute and hour counts at one instant (queue/stats.py).
-- KEYS[1..n] minute or hour hashes of one webhook
-- returns: for each key, its fields and values (HGETALL; empty when it does not exist), so a
-- rollup running meanwhile never shows a minute both in its hour and on its own
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HGETALL', KEYS[i])
end
return out
