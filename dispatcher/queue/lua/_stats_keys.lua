-- _stats_keys.lua (included by stats_add.lua and stats_roll.lua): refuse, before any write,
-- keys of the wrong type: KEYS[1] must be a zset (pending minutes), the others hashes.
local function check_stats_keys()
  for i = 1, #KEYS do
    local kind = redis.call('TYPE', KEYS[i]).ok
    local want = i == 1 and 'zset' or 'hash'
    if kind ~= 'none' and kind ~= want then
      return 'WRONGTYPE ' .. KEYS[i] .. ' is a ' .. kind
    end
  end
  return nil
end
