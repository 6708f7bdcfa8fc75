#!lua
-- promote.lua: move due jobs from the delayed zset to the ready stream.
-- KEYS[1] delayed zset   KEYS[2] ready stream   KEYS[3] jobs hash
-- ARGV[1] most jobs to move
-- returns: {jobs moved, Redis TIME in ms, ids dropped because their record was gone}
-- Due is judged by the Redis server's clock, so workers on skewed hosts agree.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGE', KEYS[1], '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, ARGV[1])
local orphans = {}
for _, job_id in ipairs(due) do
  local record = redis.call('HGET', KEYS[3], job_id)
  local cut = record and string.find(record, '\n', 1, true)
  if cut then
    local meta = cjson.decode(string.sub(record, 1, cut - 1))
    meta.sid = redis.call('XADD', KEYS[2], '*', 'j', job_id, 'w', meta.w)
    meta.s = 'queued'
    redis.call('HSET', KEYS[3], job_id, cjson.encode(meta) .. string.sub(record, cut))
  else
    orphans[#orphans + 1] = job_id
  end
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return {#due - #orphans, now_ms, orphans}
