#!lua flags=no-writes
-- stats_read.lua: read a webhook's minute and hour counts at one instant (queue/stats.py).
-- KEYS[1..n] minute or hour hashes of one webhook
-- ARGV[1] the first key that is wanted only while not rolled into its hour (field r): from
--   there on, a rolled minute answers empty (n + 1: every key is wanted)
-- returns: for each key, its fields and values (HGETALL; empty when it does not exist), so a
-- rollup running meanwhile never shows a minute both in its hour and on its own
local unrolled_from = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  if i >= unrolled_from and redis.call('HEXISTS', KEYS[i], 'r') == 1 then
    out[i] = {}
  else
    out[i] = redis.call('HGETALL', KEYS[i])
  end
end
return out
