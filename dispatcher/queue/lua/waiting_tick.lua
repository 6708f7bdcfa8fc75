#!lua
-- waiting_tick.lua: release the waiting jobs whose room freed without an attempt ending in
-- this shard's settle.lua (a lease expired with its dead holder, the webhook went, or the
-- worker that would have released them died). Run by every worker about once a second.
-- KEYS[1] waiters zset (webhook id -> last release ms)   KEYS[2] webhooks hash
-- KEYS[3] jobs hash   KEYS[4] dlq stream   KEYS[5] rates hash (admit.lua)
-- ARGV[1] key base ('<prefix>:{tag}:'): waiting zsets are base..'waiting:'..webhook id, lease
--   zsets base..'lease:'..webhook id and ready streams base..'q:'..stream..':ready', as in
--   keys.py (same hash tag)
-- ARGV[2] most jobs released per webhook per tick
-- ARGV[3] ms without a release after which a webhook without max_in_flight or rate_limit
--   gets ARGV[4] of its waiting jobs back (its releasers are gone, or all its attempts ended
--   elsewhere)   ARGV[5] the rate limit's reservation horizon ms (admit.lua)
-- returns: {webhook id, jobs released, ...}
--
-- A webhook deleted or disabled: its waiting jobs go back to their queue, where they are
-- dead-lettered as before. A webhook with max_in_flight: as many as its leases leave room for;
-- with rate_limit: as many as there are slots left to reserve within the horizon (its jobs
-- beyond it wait here rather than come back every horizon); with both, the fewer.
-- Any other: a few once nothing has released its jobs for a while; the attempts these start
-- release the rest as they end. A webhook with nothing left waiting leaves the waiters zset.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base, batch = ARGV[1], tonumber(ARGV[2])
local idle, kick, horizon = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local released = {}

-- As settle.lua releases them (_record.lua's requeue: an unreadable record is dead-lettered,
-- a gone one dropped, and either releases its FIFO lane).
local function release(waiting, count)
  return requeue_oldest(waiting, count, KEYS[3], KEYS[4], base)
end

local waiters = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #waiters, 2 do
  local webhook_id, last = waiters[i], tonumber(waiters[i + 1])
  local waiting = base .. 'waiting:' .. webhook_id
  local raw = redis.call('HGET', KEYS[2], webhook_id)
  local ok, hook = false, nil
  if raw then ok, hook = pcall(cjson.decode, raw) end
  local count = 0
  if not (ok and type(hook) == 'table' and hook.enabled == true) then
    count = batch
  else
    local rate = type(hook.rate_limit) == 'table' and tonumber(hook.rate_limit.per_second) or 0
    local limited = false
    count = batch
    if type(hook.max_in_flight) == 'number' then
      local lease = base .. 'lease:' .. webhook_id
      redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)  -- leases of dead holders
      count = math.min(count, hook.max_in_flight - redis.call('ZCARD', lease))
      limited = true
    end
    if rate > 0 then
      -- The slots admit.lua would hand out within the horizon: the next at taken - tolerance,
      -- then one per interval. The first counts too, so a rate below one per horizon still
      -- gets its next job released (before, floor(horizon * rate) was 0 for those: stuck).
      local burst = math.max(1, tonumber(hook.rate_limit.burst) or rate)
      local tolerance = (burst - 1) * 1000 / rate
      local stored = redis.call('HGET', KEYS[5], webhook_id) or ''
      local tat, sent = string.match(stored, '^(%S+) (%S+)$')
      local taken = math.max(tonumber(tat or stored) or 0, tonumber(sent) or 0, now)
      local room_ms = now + horizon + tolerance - taken
      local slots = room_ms >= 0 and math.floor(room_ms * rate / 1000) + 1 or 0
      count = math.min(count, slots)
      limited = true
    end
    if not limited then count = (now - last >= idle) and kick or 0 end
  end
  local moved = 0
  if count > 0 then moved = release(waiting, count) end
  if moved > 0 then
    released[#released + 1] = webhook_id
    released[#released + 1] = moved
    redis.call('ZADD', KEYS[1], now, webhook_id)
  end
  if redis.call('EXISTS', waiting) == 0 then redis.call('ZREM', KEYS[1], webhook_id) end
end
return released
