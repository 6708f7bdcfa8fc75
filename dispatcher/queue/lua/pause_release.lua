#!lua
-- pause_release.lua: put the held jobs of webhooks no longer paused back into their queues.
-- KEYS[1] holders set (the webhooks 'W' with a held zset, _held.lua)
-- KEYS[2] webhooks hash   KEYS[3] jobs hash   KEYS[4] dlq stream
-- KEYS[5] the set of held streams ('W|S', _held.lua)
-- KEYS[6] the set of webhooks to release ('releasing': resumed, disabled, deleted, draining)
-- KEYS[7] the safety net's cursor over KEYS[1] and KEYS[5] ('holders:scan', 'N:cursor')
-- KEYS[8] the queues set of the shard (keys.py 'queues': where W's held streams may be)
-- ARGV[1] key base ('<prefix>:{tag}:'; held zsets are base..'held:'..webhook id, held and
--   ready streams base..'q:'..stream..':ready', as in keys.py, same hash tag)
-- ARGV[2] most held jobs put back per call, all webhooks together (a mass resume drains over
--   several calls, so no call blocks Redis long; 0 from a resume, which leaves them to the tick)
-- ARGV[3] the consumer group of the ready streams (keys.GROUP)
-- ARGV[4] how many holders members the safety net looks at per call (about: SSCAN's COUNT)
-- ARGV[5..] the webhooks to look at (the resume's own call; none: the tick's)
-- returns: {webhook id, jobs put back, ...}
--
-- What a call costs does not grow with the webhooks that stay paused: the tick walks the
-- 'releasing' set (each resume, disable and delete adds its webhook, pauses.py; a webhook
-- leaves it once paused again or drained), and a safety net reads the records of about
-- ARGV[4] more holders members, from where the call before left off, so a webhook that is
-- not paused and missed that set (a crash between the change and its SADD; resumed by a
-- release before this one) joins it within (holders / ARGV[4]) calls.
-- A webhook's own held zset and streams are found without walking the holders sets: its zset
-- is its own name in KEYS[1]; its held streams are the members 'W|...' of KEYS[5] (SSCAN
-- MATCH: found whatever its queue, also one KEYS[8] does not list or its record no longer names).
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
local hooks = {}  -- by webhook id: {raw record or false, decoded table or nil}
local function read_hook(webhook_id)
  if hooks[webhook_id] == nil then
    local raw = redis.call('HGET', KEYS[2], webhook_id)
    local h = nil
    if raw then
      local decoded, v = pcall(cjson.decode, raw)
      if decoded and type(v) == 'table' then h = v end
    end
    hooks[webhook_id] = {raw or false, h}
  end
  return hooks[webhook_id]
end
local function is_paused(h)
  return h ~= nil and h.paused == true and h.enabled == true
end
-- The webhook's holders members: its held zset and its held streams, found as said above.
local function members_of(webhook_id, h)
  local mine = {}
  if redis.call('SISMEMBER', KEYS[1], webhook_id) == 1 then mine[1] = webhook_id end
  -- every held stream 'W|S' of this webhook, whatever its queue: the one its record names now,
  -- an earlier one, or one the shard's queues set does not list (a deleted webhook has no record)
  local pattern = string.gsub(webhook_id, '[%*%?%[%]\\]', '\\%0') .. '|*'
  local cursor = '0'
  repeat
    local page = redis.call('SSCAN', KEYS[5], cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = page[1]
    for _, name in ipairs(page[2]) do mine[#mine + 1] = name end
  until cursor == '0'
  return mine
end
local webhook_ids = {}
for i = 5, #ARGV do webhook_ids[#webhook_ids + 1] = ARGV[i] end
local resuming = #webhook_ids > 0  -- the resume's own call (pauses.resume)
if resuming then
  for _, webhook_id in ipairs(webhook_ids) do redis.call('SADD', KEYS[6], webhook_id) end
else
  webhook_ids = redis.call('SMEMBERS', KEYS[6])
  local listed = {}
  for _, webhook_id in ipairs(webhook_ids) do listed[webhook_id] = true end
  -- the safety net: the next members of the holders sets, from where the last call left off
  -- (on into the other set when one ends, once, so a small or empty one wastes no call)
  local at = redis.call('GET', KEYS[7]) or '1:0'
  local which, cursor = string.match(at, '^([15]):(%d+)$')
  if not which then which, cursor = '1', '0' end
  local seen = 0
  for _ = 1, 2 do
    local scan = redis.call('SSCAN', KEYS[tonumber(which)], cursor, 'COUNT', tonumber(ARGV[4]))
    for _, member in ipairs(scan[2]) do
      local webhook_id, stream = holder_parts(member)
      if not listed[webhook_id] then
        listed[webhook_id] = true
        if not is_paused(read_hook(webhook_id)[2]) then
          webhook_ids[#webhook_ids + 1] = webhook_id
          redis.call('SADD', KEYS[6], webhook_id)
        end
      end
      -- a held stream of a queue the queues set misses (a release before it) joins it
      if stream ~= '' then
        local q = string.match(stream, '^([^:]+)')
        if q and redis.call('SISMEMBER', KEYS[8], q) == 0 then
          redis.call('SADD', KEYS[8], q)
        end
      end
    end
    seen, cursor = seen + #scan[2], scan[1]
    if cursor ~= '0' then break end
    which = which == '1' and '5' or '1'
    if seen >= tonumber(ARGV[4]) then break end
  end
  if which .. ':' .. cursor ~= at then redis.call('SET', KEYS[7], which .. ':' .. cursor) end
end
local released, left = {}, batch
for _, webhook_id in ipairs(webhook_ids) do
  local read = read_hook(webhook_id)
  local hook, h = read[1], read[2]
  local paused = is_paused(h)
  local draining = h ~= nil and type(h.draining) == 'number' and h.draining
  local mine = members_of(webhook_id, h)
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
  if paused or (empty and not mark) then
    -- paused again (its next resume adds it back) or drained: the tick leaves it
    redis.call('SREM', KEYS[6], webhook_id)
  end
end
return released
