#!lua
-- admit.lua: the cluster-wide limits of webhooks (rate_limit, max_in_flight) for claimed jobs.
-- KEYS[1] rate hash (webhook id -> 'tat sent': two GCRA theoretical arrival times, ms, one for
--   the slots handed out (taken or reserved), one for the sends)
-- KEYS[2..] lease zsets ('<job id>|<holder>' -> lease expiry ms), one per webhook with a
--   max_in_flight; the holder (the worker's consumer name) is part of the member, so an
--   outcome written late by a worker that lost its claim releases its own lease only
-- ARGV[1] lease lifetime ms (outlives an attempt: a dead holder's lease expires; the lane
--   that starts the attempt renews it, lease.lua)
-- ARGV[2] reservation horizon ms   ARGV[3] slack ms of the pace of sends (below)
-- ARGV[4] attempts the calling process may start now in all (its free lanes)
-- ARGV[5] the calling worker's consumer name (the leases' holder)
-- then per webhook: id, per_second (0: none), burst, max_in_flight, index of its lease key in
--   KEYS (0: none), room (attempts the calling process may start for it now), job count n,
--   then n pairs: job id, 1 when the job holds a rate slot reserved for it earlier
-- returns: {Redis time ms, then per job in order: verdict, due ms}. Verdicts:
--   0 admitted (and leased); 1 rate limited, it holds a slot and goes again at due ms;
--   2 rate limited beyond the horizon (try again at due ms); 3 max_in_flight reached;
--   4 no room in the calling process (its own cap on the webhook, or its free lanes)
-- The rate limit is GCRA: a job may go at t when tat - t <= (burst - 1) * interval. Each job
-- takes exactly one slot, once: one that may go moves tat on by one interval, and one that may
-- not reserves the next slot (moving tat on) and is put back due at it. A job that holds a
-- slot takes no other, however late it comes back (a backlog ahead of it, max_in_flight, the
-- process's room): it goes as soon as the pace of sends allows ('sent', the same GCRA over
-- the sends alone, with the slack added to its tolerance so that the jitter of promoting and
-- claiming never holds a job back), so late jobs go at most a slack's worth above the rate,
-- and it keeps its slot while it waits. A job refused for max_in_flight or room takes nothing.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lifetime, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local slack, free = tonumber(ARGV[3]), tonumber(ARGV[4])
local holder = ARGV[5]
local out = {now}
local i = 6
while i <= #ARGV do
  local webhook_id = ARGV[i]
  local rate, burst = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local cap, lease_index = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local room, n = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  i = i + 7
  local lease, held = nil, 0
  if lease_index > 0 then
    lease = KEYS[lease_index]
    redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)  -- leases of dead holders
    held = redis.call('ZCARD', lease)
  end
  local interval, tolerance, tat, sent = 0, 0, now, now
  local stored_tat, stored_sent, moved = '0', '0', false
  if rate > 0 then
    interval = 1000 / rate
    tolerance = (burst - 1) * interval
    local stored = redis.call('HGET', KEYS[1], webhook_id) or ''
    stored_tat, stored_sent = string.match(stored, '^(%S+) (%S+)$')
    if not stored_tat then  -- one number: written before the sends were paced apart
      stored_tat, stored_sent = stored, '0'
    end
    tat = math.max(tonumber(stored_tat) or 0, now)
    sent = math.max(tonumber(stored_sent) or 0, now)
  end
  for _ = 1, n do
    local job_id, reserved = ARGV[i], ARGV[i + 1] == '1'
    i = i + 2
    local verdict, due, takes = 0, 0, false
    if lease and held >= cap then
      verdict = 3
    elseif rate > 0 and reserved then
      local wait = sent - tolerance - slack
      if wait > now then verdict, due = 1, math.ceil(wait) end
    elseif rate > 0 then
      local next_tat = math.max(tat, sent)  -- slots are never handed out ahead of the sends
      if next_tat - now <= tolerance then
        takes = true
      else
        local slot = next_tat - tolerance
        if slot - now <= horizon then
          verdict, due = 1, math.ceil(slot)
          tat, moved = next_tat + interval, true
        else
          verdict, due = 2, now + horizon
        end
      end
    end
    if verdict == 0 and (room <= 0 or free <= 0) then verdict = 4 end
    if verdict == 0 then
      room, free = room - 1, free - 1
      if takes then tat, moved = math.max(tat, sent) + interval, true end
      if rate > 0 then sent = sent + interval end
      if lease then
        redis.call('ZADD', lease, now + lifetime, job_id .. '|' .. holder)
        held = held + 1
      end
    end
    out[#out + 1] = verdict
    out[#out + 1] = due
  end
  if rate > 0 then
    -- The schedule is written back only when a slot was handed out, so what Redis holds
    -- always marks the end of the slots handed out.
    local kept = sent
    if kept == now then kept = stored_sent end
    redis.call('HSET', KEYS[1], webhook_id, (moved and tat or stored_tat) .. ' ' .. kept)
  end
end
return out
