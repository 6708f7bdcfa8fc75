#!lua
-- promote.lua: move due jobs from the delayed zset to the ready stream.
-- KEYS[1] delayed zset   KEYS[2] ready stream   KEYS[3] jobs hash   KEYS[4] dlq stream
-- ARGV[1] most jobs to move
-- returns: {jobs moved, Redis TIME in ms, ids dropped because their record was gone,
--           ids dead-lettered as malformed}
-- Due is judged by the Redis server's clock, so workers on skewed hosts agree.
-- Every record is checked before anything is written for it, and nothing below can fail:
-- a record that cannot be read (no meta line, meta not JSON, no webhook) is dead-lettered
-- with its raw start and reason 'malformed', so one bad record never stops the promoter nor
-- makes it promote the jobs ahead of it again on every tick. A job dropped or dead-lettered so
-- that heads a FIFO lane releases it (_lane.lua's release_lane): a lane never sticks.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGE', KEYS[1], '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, ARGV[1])
local moved, orphans, malformed = 0, {}, {}
for _, job_id in ipairs(due) do
  local record = redis.call('HGET', KEYS[3], job_id)
  if not record then
    orphans[#orphans + 1] = job_id
    release_lane(KEYS[3]:sub(1, -5), KEYS[3], KEYS[4], job_id, now_ms)
  else
    local meta, rest = split_record(record)
    if meta and type(meta.w) == 'string' and meta.w ~= '' then
      meta.sid = redis.call('XADD', KEYS[2], '*', 'j', job_id, 'w', meta.w)
      meta.s = 'queued'
      redis.call('HSET', KEYS[3], job_id, cjson.encode(meta) .. rest)
      moved = moved + 1
    else
      local raw = cjson.encode({j = job_id, record = string.sub(record, 1, 200)})
      redis.call('XADD', KEYS[4], '*', 'raw', raw, 'r', 'malformed')
      malformed[#malformed + 1] = job_id
      release_lane(KEYS[3]:sub(1, -5), KEYS[3], KEYS[4], job_id, now_ms)
    end
  end
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return {moved, now_ms, orphans, malformed}
