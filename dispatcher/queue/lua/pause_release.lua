#!lua
-- pause_release.lua: put the held jobs of webhooks no longer paused back into their queues.
-- KEYS[1] holders set (the webhooks 'W' with a held zset, _held.lua)
-- KEYS[2] webhooks hash   KEYS[3] jobs hash   KEYS[4] dlq stream
-- KEYS[5] the set of held streams ('W|S', _held.lua)
-- ARGV[1] key base ('<prefix>:{tag}:'; held zsets are base..'held:'..webhook id, held and
--   ready streams base..'q:'..stream..':ready', as in keys.py, same hash tag)
-- ARGV[2] most held jobs put back per call, all webhooks together (a mass resume drains over
--   several calls, so no call blocks Redis long; 0 from a resume, which leaves them to the tick)
-- ARGV[3] the consumer group of the ready streams (keys.GROUP)
-- ARGV[4..] the webhooks to look at (none: every webhook in either set)
-- returns: {webhook id, jobs put back, ...}
--
-- A webhook still paused (and enabled) keeps its held jobs. One resumed says "draining" in its
-- record (1) until its held jobs are all back and each stream's group claimed past the last
-- put back there (its gate holds its other new jobs meanwhile, so they go out after the
-- older ones): a tick's call that finds none held makes it 2, and
-- the next call that finds none held drops it (a hold decided by a gate just before the first
-- is written by then, in order, and not left behind a newer job let through). The resume's
-- own call, finding none held, drops it at once: a hold still being written then finds the
-- webhook resumed and makes its job due at once, as before this mark.
-- Any other (resumed, disabled or
-- deleted) gets its oldest held jobs back at the end of their queue's ready stream, oldest
-- (first accepted) first across its held zset and streams, as settle.lua puts waiting jobs
-- back: there its gate sends them (within its limits) or dead-letters them (disabled or
-- deleted). A held zset or stream left empty leaves its set. A job whose data cannot
-- be read is dead-lettered as malformed (and its FIFO lane, if it names one, goes on); one
-- whose record is gone is dropped.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
-- include: _lane.lua
-- include: _held.lua
-- The webhook record's end ',"draining":N}' (model.py writes the mark last) becomes 'tail':
-- cut off ('}'), it leaves the record as model.py writes it without the mark.
local function set_mark(webhook_id, hook, tail)
  local cut = string.find(hook, ',"draining":[12]}$')
  redis.call('HSET', KEYS[2], webhook_id, string.sub(hook, 1, cut - 1) .. tail)
end
local base, batch, group = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members, order = {}, {}  -- by webhook id: its holders members; the webhook ids seen
for _, set in ipairs({KEYS[1], KEYS[5]}) do
  for _, member in ipairs(redis.call('SMEMBERS', set)) do
    local webhook_id = holder_parts(member)
    if not members[webhook_id] then
      members[webhook_id] = {}
      order[#order + 1] = webhook_id
    end
    table.insert(members[webhook_id], member)
  end
end
local webhook_ids = {}
for i = 4, #ARGV do webhook_ids[#webhook_ids + 1] = ARGV[i] end
local resuming = #webhook_ids > 0  -- the resume's own call (pauses.resume)
if not resuming then webhook_ids = order end
local released, left = {}, batch
for _, webhook_id in ipairs(webhook_ids) do
  local hook = redis.call('HGET', KEYS[2], webhook_id)
  local paused, draining = false, false
  if hook then
    local decoded, h = pcall(cjson.decode, hook)
    paused = decoded and type(h) == 'table' and h.paused == true and h.enabled == true
    draining = decoded and type(h) == 'table' and type(h.draining) == 'number' and h.draining
  end
  local mine = members[webhook_id] or {}
  -- the jobs put back by the calls before this one all claimed (so none queued before them
  -- is left ungated), read before this call puts back more
  local caught_up = claimed_past(base, webhook_id, group)
  local count = 0
  if not paused and left > 0 then
    count = release_held(base, KEYS[3], KEYS[4], webhook_id, mine, left, now)
    left = left - count
    if count > 0 then
      released[#released + 1] = webhook_id
      released[#released + 1] = count
    end
  end
  local empty = true
  for _, member in ipairs(mine) do
    if held_empty(base, member) then
      redis.call('SREM', select(2, holder_parts(member)) == '' and KEYS[1] or KEYS[5], member)
    else
      empty = false
    end
  end
  local mark = draining and string.match(hook, ',"draining":([12])}$')
  if mark and not empty and mark == '2' then
    set_mark(webhook_id, hook, ',"draining":1}')
  elseif mark and empty and not paused and not caught_up then
    -- none held, but jobs queued before those put back may still be unclaimed: held by the
    -- gate as it claims them, behind the backlog; the tick comes back
    if mark == '2' then set_mark(webhook_id, hook, ',"draining":1}') end
    redis.call('SADD', KEYS[1], webhook_id)
  elseif mark and empty and not paused and mark == '1' and not (resuming and count == 0) then
    -- none held: once more at the next call (a hold decided before this call is written by
    -- then), so the member that makes the tick come back; so too after a resume's own call
    -- that put back the whole backlog (jobs queued before it may not be claimed yet)
    set_mark(webhook_id, hook, ',"draining":2}')
    redis.call('SADD', KEYS[1], webhook_id)
  elseif mark and empty and not paused then
    -- still none: the webhook's jobs go straight to its gate again
    set_mark(webhook_id, hook, '}')
    mark = nil
  end
  if not mark then redis.call('DEL', base .. 'resumed:' .. webhook_id) end  -- not draining
end
return released
