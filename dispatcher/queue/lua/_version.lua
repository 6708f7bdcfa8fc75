-- _version.lua: the next version of a webhook record written here, as a string of
-- digits: max(its version in the versions hash + 1, Redis TIME in ms), so a later write in
-- this region always wins over the one before and, across regions, a later one usually does.
-- Not a script of its own: scripts.py puts it in place of the line '-- include: _version.lua'.
local function next_version(versions, id)
  local prev = redis.call('HGET', versions, id)
  local before = prev and tonumber(string.match(prev, '^(%d+)')) or 0
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return string.format('%d', math.max(before + 1, now))
end
