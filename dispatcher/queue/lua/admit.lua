#!lua
-- admit.lua: the cluster-wide limits of webhooks (rate_limit, max_in_flight) for claimed jobs.
-- KEYS[1] rate hash (webhook id -> theoretical arrival time, ms)
-- KEYS[2..] lease zsets (job id -> lease expiry ms), one per webhook with a max_in_flight
-- ARGV[1] lease lifetime ms (outlives an attempt: a dead holder's lease expires)
-- ARGV[2] reservation horizon ms
-- then per webhook: id, per_second (0: none), burst, max_in_flight, index of its lease key in
--   KEYS (0: none), job count n, then n pairs: job id, 1 when the job holds a rate slot now
-- returns: {Redis time ms, then per job in order: verdict, due ms}. Verdicts:
--   0 admitted (and leased); 1 rate limited, a slot is reserved for it at due ms;
--   2 rate limited beyond the horizon (try again at due ms); 3 max_in_flight reached
-- The rate limit is GCRA: a job may go at t when tat - t <= (burst - 1) * interval, and each
-- job that goes (or reserves a later slot) moves tat on by one interval. A reserved job is
-- put back due at its slot and admitted then without taking another one, so a backlog
-- drains at exactly the rate, in order, each job deferred once.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lifetime, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {now}
local i = 3
while i <= #ARGV do
  local webhook_id = ARGV[i]
  local rate, burst = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local cap, lease_index, n = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  i = i + 6
  local lease, held = nil, 0
  if lease_index > 0 then
    lease = KEYS[lease_index]
    redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)  -- leases of dead holders
    held = redis.call('ZCARD', lease)
  end
  local interval, tolerance, tat = 0, 0, now
  if rate > 0 then
    interval = 1000 / rate
    tolerance = (burst - 1) * interval
    tat = math.max(tonumber(redis.call('HGET', KEYS[1], webhook_id) or 0) or 0, now)
  end
  for _ = 1, n do
    local job_id, reserved = ARGV[i], ARGV[i + 1] == '1'
    i = i + 2
    local verdict, due = 0, 0
    if lease and held >= cap then
      verdict = 3
    elseif rate > 0 and not reserved then
      if tat - now <= tolerance then
        tat = tat + interval
      else
        local slot = tat - tolerance
        if slot - now <= horizon then
          verdict, due = 1, math.ceil(slot)
          tat = tat + interval
        else
          verdict, due = 2, now + horizon
        end
      end
    end
    if verdict == 0 and lease then
      redis.call('ZADD', lease, now + lifetime, job_id)
      held = held + 1
    end
    out[#out + 1] = verdict
    out[#out + 1] = due
  end
  if rate > 0 then redis.call('HSET', KEYS[1], webhook_id, tostring(tat)) end
end
return out
