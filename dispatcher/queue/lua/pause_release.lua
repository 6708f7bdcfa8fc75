#!lua
-- pause_release.lua: put the held jobs of webhooks no longer paused back into their queues.
-- KEYS[1] holders set (a member per held stream 'W|S' and per held zset 'W', _held.lua)
-- KEYS[2] webhooks hash   KEYS[3] jobs hash   KEYS[4] dlq stream
-- ARGV[1] key base ('<prefix>:{tag}:'; held zsets are base..'held:'..webhook id, held and
--   ready streams base..'q:'..stream..':ready', as in keys.py, same hash tag)
-- ARGV[2] most held jobs put back per call, all webhooks together (a mass resume drains over
--   several calls, so no call blocks Redis long)
-- ARGV[3..] the webhooks to look at (none: every webhook in the holders set)
-- returns: {webhook id, jobs put back, ...}
--
-- A webhook still paused (and enabled) keeps its held jobs. Any other (resumed, disabled or
-- deleted) gets its oldest held jobs back at the end of their queue's ready stream, oldest
-- (first accepted) first across its held zset and streams, as settle.lua puts waiting jobs
-- back: there its gate sends them (within its limits) or dead-letters them (disabled or
-- deleted). A held zset or stream left empty leaves the holders set. A job whose data cannot
-- be read is dead-lettered as malformed (and its FIFO lane, if it names one, goes on); one
-- whose record is gone is dropped.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
-- include: _lane.lua
-- include: _held.lua
local base, batch = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members, order = {}, {}  -- by webhook id: its holders members; the webhook ids seen
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local webhook_id = holder_parts(member)
  if not members[webhook_id] then
    members[webhook_id] = {}
    order[#order + 1] = webhook_id
  end
  table.insert(members[webhook_id], member)
end
local webhook_ids = {}
for i = 3, #ARGV do webhook_ids[#webhook_ids + 1] = ARGV[i] end
if #webhook_ids == 0 then webhook_ids = order end
local released, left = {}, batch
for _, webhook_id in ipairs(webhook_ids) do
  local hook = redis.call('HGET', KEYS[2], webhook_id)
  local paused = false
  if hook then
    local decoded, h = pcall(cjson.decode, hook)
    paused = decoded and type(h) == 'table' and h.paused == true and h.enabled == true
  end
  local mine = members[webhook_id] or {}
  if not paused and left > 0 then
    local count = release_held(base, KEYS[3], KEYS[4], webhook_id, mine, left, now)
    left = left - count
    if count > 0 then
      released[#released + 1] = webhook_id
      released[#released + 1] = count
    end
  end
  for _, member in ipairs(mine) do
    if held_empty(base, member) then redis.call('SREM', KEYS[1], member) end
  end
end
return released
