#!lua
-- breaker_report.lua: add workers' recent outcomes per webhook and move the breakers.
-- KEYS[1] breakers hash (webhook id -> breaker JSON)
-- KEYS[2] failing hash (webhook id -> failing since ms): the run of failures of each webhook
--   without a success since, kept when its breaker is forgotten (breaker_tick.lua), so a
--   webhook that fails less than once a minute still reaches delivery.disable_after_s
-- ARGV[1] bucket ms   ARGV[2] fewest attempts in the window to judge   ARGV[3] failure ratio
-- ARGV[4] first open period ms   ARGV[5] longest open period ms
-- then 4 values per webhook: id, successes, failures, last error ('' none)
-- returns: {Redis time ms, {webhook id, new state, retry at ms, ...}} for each breaker moved
--
-- Breaker JSON: s state (closed, open, half_open), b start of the current bucket (ms),
-- c and p {successes, failures} of the current and previous bucket, f failing since (ms, 0
-- after a success; a copy of the failing hash's entry), e last error, n times opened since
-- the last close, o opened at,
-- u when a probe may go, pj the probe's job id ('' the next job), pa when the probe went.
-- The window is two buckets, the older one weighted by how much of it is still in the window.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket, fewest, ratio = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local first_open, longest_open = tonumber(ARGV[4]), tonumber(ARGV[5])
local changes = {}

local function open(b, webhook_id)
  b.n = (b.n or 0) + 1
  b.s, b.o, b.pj, b.pa = 'open', now, nil, nil
  b.u = now + math.min(longest_open, first_open * 2 ^ (b.n - 1))
  changes[#changes + 1] = webhook_id
  changes[#changes + 1] = 'open'
  changes[#changes + 1] = b.u
end

for i = 6, #ARGV, 4 do
  local webhook_id, ok, failed, err = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
                                      ARGV[i + 3]
  local raw = redis.call('HGET', KEYS[1], webhook_id)
  local b = raw and cjson.decode(raw) or {s = 'closed', b = now, c = {0, 0}, p = {0, 0}, f = 0}
  if now - b.b >= 2 * bucket then
    b.b, b.c, b.p = now, {0, 0}, {0, 0}
  elseif now - b.b >= bucket then
    b.b, b.p, b.c = b.b + bucket, b.c, {0, 0}
  end
  b.c[1], b.c[2] = b.c[1] + ok, b.c[2] + failed
  if err ~= '' then b.e = err end
  if ok > 0 then
    b.f = 0
    redis.call('HDEL', KEYS[2], webhook_id)
  elseif failed > 0 then
    -- The run goes on from its first failure, whether or not the breaker was forgotten since
    -- (a breaker's own f counts when the hash has none: one written before the hash existed).
    local since = tonumber(redis.call('HGET', KEYS[2], webhook_id))
    if not since then
      since = (b.f or 0) > 0 and b.f or now
      redis.call('HSET', KEYS[2], webhook_id, since)
    end
    b.f = since
  end
  if b.s == 'closed' then
    local weight = math.max(0, 1 - (now - b.b) / bucket)
    local oks, fails = b.c[1] + b.p[1] * weight, b.c[2] + b.p[2] * weight
    if oks + fails >= fewest and fails >= ratio * (oks + fails) then open(b, webhook_id) end
  elseif ok > 0 then
    b.s, b.n, b.o, b.u, b.pj, b.pa = 'closed', 0, nil, nil, nil, nil
    b.c, b.p = {ok, 0}, {0, 0}
    changes[#changes + 1] = webhook_id
    changes[#changes + 1] = 'closed'
    changes[#changes + 1] = 0
  elseif b.s == 'half_open' and failed > 0 then
    open(b, webhook_id)
  end
  redis.call('HSET', KEYS[1], webhook_id, cjson.encode(b))
end
return {now, changes}
