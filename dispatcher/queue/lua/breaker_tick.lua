#!lua
-- breaker_tick.lua: the timed side of the breakers, run by every worker about once a second.
-- KEYS[1] breakers hash   KEYS[2] jobs hash   KEYS[3] webhooks hash
-- KEYS[4] failing hash (webhook id -> failing since ms; see breaker_report.lua)
-- ARGV[1] key base ('<prefix>:{tag}:'): parked zsets are base..'parked:'..webhook id and
--   delayed zsets base..'q:'..stream..':delayed', as in keys.py (same hash tag)
-- ARGV[2] probe timeout ms   ARGV[3] disable after ms (failing that long)
-- ARGV[4] most parked jobs released per webhook per tick   ARGV[5] idle ms before a closed
--   breaker with nothing parked is forgotten
-- returns: {Redis time ms, {webhook id, probe job id ('' none parked), ...} probes sent,
--           {webhook id, jobs released, ...}, {webhook id, failing since ms, last error, ...}
--           to disable}
--
-- Open past its period (or a probe lost for too long): half-open, and the oldest parked job
-- goes back to its queue as the probe. Closed, or its webhook disabled or deleted: parked
-- jobs go back to their queues (where a disabled webhook's jobs are dead-lettered).
-- Failing for disable-after ms: the webhook is to be disabled. A breaker's f is its webhook's
-- entry in the failing hash, which outlives the breaker, and every reported failure brings
-- the breaker back for at least a minute, so this sees a webhook that fails only now and then
-- without ever walking the failing hash. A paused webhook's run does not age: its f (and
-- failing entry) is moved to now at each tick while it is paused. A deleted webhook's failing entry goes with its breaker.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base, probe_timeout, disable_after = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local batch, idle = tonumber(ARGV[4]), tonumber(ARGV[5])
local probes, released, disable = {}, {}, {}

local function release(parked, count)
  local ids = redis.call('ZRANGE', parked, 0, count - 1)
  for _, job_id in ipairs(ids) do
    local meta = split_record(redis.call('HGET', KEYS[2], job_id))
    if meta and meta.q then
      redis.call('ZADD', base .. 'q:' .. meta.q .. ':delayed', now, job_id)
    else
      release_lane(base, KEYS[2], base .. 'dlq', job_id, now)  -- dropped: its lane moves on
    end
  end
  if #ids > 0 then redis.call('ZREM', parked, unpack(ids)) end
  return ids
end

local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local webhook_id = entries[i]
  local ok, b = pcall(cjson.decode, entries[i + 1])
  if not ok or type(b) ~= 'table' then b = {s = 'closed', b = 0} end
  local parked = base .. 'parked:' .. webhook_id
  local hook = redis.call('HGET', KEYS[3], webhook_id)
  local enabled, paused = false, false
  if hook then
    local decoded, h = pcall(cjson.decode, hook)
    enabled = decoded and type(h) == 'table' and h.enabled == true
    paused = enabled and h.paused == true
  end
  if not enabled or b.s == 'closed' then
    local ids = release(parked, batch)
    if #ids > 0 then
      released[#released + 1] = webhook_id
      released[#released + 1] = #ids
    end
    if #ids < batch and (not enabled or now - (b.b or 0) >= idle) then
      redis.call('HDEL', KEYS[1], webhook_id)
      if not hook then redis.call('HDEL', KEYS[4], webhook_id) end
    end
  elseif (b.s == 'open' and now >= (b.u or 0))
      or (b.s == 'half_open' and now - (b.pa or 0) >= probe_timeout) then
    local ids = release(parked, 1)
    b.s, b.pa, b.pj = 'half_open', now, ids[1] or ''
    redis.call('HSET', KEYS[1], webhook_id, cjson.encode(b))
    probes[#probes + 1] = webhook_id
    probes[#probes + 1] = b.pj
  end
  if paused and (b.f or 0) > 0 then
    -- No attempt can succeed while the webhook is paused: its run of failures does not age
    -- (it goes on from now), so neither the pause nor the resume disables it and dead-letters
    -- the jobs the pause keeps.
    b.f = now
    redis.call('HSET', KEYS[4], webhook_id, now)
    if redis.call('HEXISTS', KEYS[1], webhook_id) == 1 then
      redis.call('HSET', KEYS[1], webhook_id, cjson.encode(b))
    end
  elseif enabled and (b.f or 0) > 0 and now - b.f >= disable_after then
    disable[#disable + 1] = webhook_id
    disable[#disable + 1] = b.f
    disable[#disable + 1] = b.e or ''
  end
end
return {now, probes, released, disable}
