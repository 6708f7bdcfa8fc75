#!lua
-- claim.lua: claim new entries for one consumer from a queue's priority streams, serving the
-- streams in the order given until the budget is spent, in one round trip.
-- KEYS: the ready streams, in the order to serve them
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] budget (entries to claim at most)
-- returns: {index of the stream in KEYS, its entries as XREADGROUP gives them, ...}
-- The caller rotates which stream comes first, so a busy high stream never starves low.
local budget = tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  if budget <= 0 then break end
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', budget,
                           'STREAMS', key, '>')
  if reply and reply[1] then
    local entries = reply[1][2]
    out[#out + 1] = i
    out[#out + 1] = entries
    budget = budget - #entries
  end
end
return out
