#!lua
-- settle.lua: write the outcomes of a batch of claimed jobs, fenced by their claims.
-- KEYS[1] ready stream   KEYS[2] jobs hash   KEYS[3] delayed zset   KEYS[4] done zset
-- KEYS[5] dlq stream   KEYS[6] breakers hash   KEYS[7] waiters zset (webhook id -> last release)
-- KEYS[8..] parked zsets ('...:parked:<webhook id>'), waiting zsets ('...:waiting:<webhook
--   id>') and lease zsets of the batch's webhooks
-- ARGV[1] group   ARGV[2] consumer
-- ARGV[3] n, the number of jobs, then 8 values per job: sid, job id, claim token (the entry's
--   delivery count when claimed), kind (streams.SettleKind: 'D' delivered, 'R' retry or wait,
--   'X' dead, 'P' parked while the webhook's breaker is open, 'W' waiting for room in the
--   webhook's waiting set, 'H' held while the webhook is paused (else as RETRY, due now):
--   a job never attempted in its compact form, any other in the held zset (_held.lua)),
--   record, score (finished, due, parked or created ms), the dead reason (X) or the index in
--   KEYS of the webhook's parked (P), waiting (W) or held (H) zset, the attempt as JSON
--   (appended as late
--   when the claim is stale; '' when the outcome made no attempt, a deferral or a park, and then
--   a stale one writes nothing)
-- then l, the number of leases to release, and l pairs: index in KEYS of a lease zset, lease
--   member ('<job id>|<consumer>', this worker's own): stale claims' included (their attempt
--   is over) unless this worker holds the job again (it took the entry back, or claimed the
--   job's next entry): the member is then that claim's lease, which its own outcome releases;
--   another worker's lease of the same job (it reclaimed the job) is left in place
-- then the key base ('<prefix>:{tag}:'; ready streams are base..'q:'..stream..':ready', as in
--   keys.py), then pairs: index in KEYS of a waiting zset, count: as attempts end, that many
--   of the webhook's waiting jobs (oldest first) go back to the end of their queue's stream,
--   after this batch's own outcomes are written
-- returns: the ids of jobs whose claim was stale (their outcome is only logged as late)
--
-- The fence: a claim is current while its entry is pending for this consumer with the
-- delivery count it had when claimed, read for each claim on its own (XPENDING of that one
-- sid), so no other entry pending for this consumer can hide it. XAUTOCLAIM moves it to
-- another consumer and bumps the count, so a worker that froze past the stall timeout finds
-- its claim gone and writes nothing but a late attempt into the history.
--
-- Nothing here can fail on what Redis holds: every check comes before the first write (a
-- retried batch never adds a second DLQ entry), and a stale outcome whose job record is not
-- "meta\npayload" (a job never attempted holds only a locator, _record.lua's, while its
-- data travels in its entry) is refused without a late attempt: the locator is what reclaim
-- and the orphan sweep need to find the job's data, so it is left as it is.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- A delivered or dead job whose record names a FIFO lane ('ol', _lane.lua) releases it: it is
-- popped and the lane's next job is queued (only for a current claim, so a stale outcome never
-- releases a lane a newer claim holds). Other outcomes keep the lane blocked behind it.
-- include: _record.lua
-- include: _lane.lua
-- include: _held.lua
local group, consumer = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local last = 3 + 8 * tonumber(ARGV[3])
local leases = last + 1 + 2 * tonumber(ARGV[last + 1])
local base = ARGV[leases + 1]

-- Held only while the webhook is paused or draining (and enabled) as this runs: a resume (or a disable)
-- made since the claim finds the job due again, never left behind in the held zset.
local function still_paused(webhook_id)
  local raw = redis.call('HGET', base .. 'webhooks', webhook_id)
  if not raw then return false end
  local ok, h = pcall(cjson.decode, raw)
  if not (ok and type(h) == 'table' and h.enabled == true) then return false end
  if h.paused == true then return true end
  if type(h.draining) == 'number' and h.draining > 0 then
    -- held behind its resumed backlog: the tick (pause_release.lua) walks it until it drains
    redis.call('SADD', base .. 'releasing', webhook_id)
    return true
  end
  return false
end

local outcomes, late, stale, claimed = {}, {}, {}, {}
local settled, stale_sid = {}, {}  -- by lease member: a current claim's; a stale claim's sid
for i = 4, last, 8 do
  local sid, job_id, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local p = redis.call('XPENDING', KEYS[1], group, sid, sid, 1, consumer)
  if p[1] and not claimed[sid] and tostring(p[1][4]) == token then
    claimed[sid] = true  -- one outcome per claim: a second one in the batch is stale
    outcomes[#outcomes + 1] = i
    settled[job_id .. '|' .. consumer] = true
  else
    stale[#stale + 1] = job_id
    stale_sid[job_id .. '|' .. consumer] = sid
    local meta, rest = nil, nil
    if ARGV[i + 7] ~= '' then meta, rest = split_record(redis.call('HGET', KEYS[2], job_id)) end
    local ok, attempt = pcall(cjson.decode, ARGV[i + 7])
    if meta and ok and type(attempt) == 'table' then
      if type(meta.h) ~= 'table' then meta.h = {} end
      meta.h[#meta.h + 1] = attempt
      late[#late + 1] = job_id; late[#late + 1] = cjson.encode(meta) .. rest
    end
  end
end

-- A delivered job ('D') whose third value is not '' (jobs.payload_retention_s, in ms) keeps
-- its payload for a retry (queue/resend.py) that long, by itself: its record comes with the
-- payload, which goes to base..'payload:'..job id (keys.py) with that TTL, and the record is
-- written without it, as always for a delivered job.
local function keep_payload(job_id, record, ttl_ms)
  local cut = string.find(record, '\n', 1, true)
  if not cut or cut == #record then return record end
  redis.call('SET', base .. 'payload:' .. job_id, string.sub(record, cut + 1), 'PX', ttl_ms)
  return string.sub(record, 1, cut)
end

local records, done, delayed, acked, lanes = {}, {}, {}, {}, {}
for _, i in ipairs(outcomes) do
  local sid, job_id, kind, record, score = ARGV[i], ARGV[i + 1], ARGV[i + 3], ARGV[i + 4],
                                           ARGV[i + 5]
  acked[#acked + 1] = sid
  if kind == 'D' and ARGV[i + 6] ~= '' then record = keep_payload(job_id, record, ARGV[i + 6]) end
  if kind == 'X' then
    local dlq_id = redis.call('XADD', KEYS[5], '*', 'j', job_id, 'r', ARGV[i + 6])
    local meta, rest = split_record(record)
    if meta then
      meta.d = dlq_id
      record = cjson.encode(meta) .. rest
    end
  elseif kind == 'R' then
    delayed[#delayed + 1] = score; delayed[#delayed + 1] = job_id
  elseif kind == 'W' then
    local waiting = KEYS[tonumber(ARGV[i + 6])]
    redis.call('ZADD', waiting, score, job_id)
    redis.call('ZADD', KEYS[7], 'NX', now, string.match(waiting, 'waiting:(.*)$'))
  elseif kind == 'P' then
    -- Parked only while the breaker exists: if it closed and was forgotten meanwhile (or
    -- the webhook went), nothing would release the job, so it goes back to its queue.
    local parked = KEYS[tonumber(ARGV[i + 6])]
    if redis.call('HEXISTS', KEYS[6], string.match(parked, 'parked:(.*)$')) == 1 then
      redis.call('ZADD', parked, score, job_id)
    else
      delayed[#delayed + 1] = score; delayed[#delayed + 1] = job_id
    end
  elseif kind == 'H' then
    local held = KEYS[tonumber(ARGV[i + 6])]
    local webhook_id = string.match(held, ':held:([^:]*)$')
    if still_paused(webhook_id) then
      local locator = hold_compact(base, KEYS[2], string.sub(KEYS[1], #base + 3, -7), sid,
                                   job_id, webhook_id)
      if locator then
        record = locator
      else
        redis.call('ZADD', held, score, job_id)
        redis.call('SADD', base .. 'holders', webhook_id)
      end
    else
      delayed[#delayed + 1] = now; delayed[#delayed + 1] = job_id
    end
  else
    done[#done + 1] = score; done[#done + 1] = job_id
  end
  if kind == 'D' or kind == 'X' then
    local lane = lane_of(record)
    if lane then lanes[#lanes + 1] = lane; lanes[#lanes + 1] = job_id end
  end
  records[#records + 1] = job_id; records[#records + 1] = record
end

if #late > 0 then redis.call('HSET', KEYS[2], unpack(late)) end
if #records > 0 then redis.call('HSET', KEYS[2], unpack(records)) end
if #done > 0 then redis.call('ZADD', KEYS[4], unpack(done)) end
if #delayed > 0 then redis.call('ZADD', KEYS[3], unpack(delayed)) end
if #acked > 0 then
  redis.call('XACK', KEYS[1], group, unpack(acked))
  redis.call('XDEL', KEYS[1], unpack(acked))
end
-- Whether this consumer holds the job of a stale claim again: the claim's entry, or the entry
-- its record names now (a retry's, or a never-attempted job's locator), is pending for it.
local function holds_again(member, sid)
  local job_id = string.sub(member, 1, #member - #consumer - 1)
  local record = redis.call('HGET', KEYS[2], job_id)
  local meta = split_record(record)
  local now_sid = meta and meta.sid
  if is_locator(record) then now_sid = select(2, parse_locator(record, job_id)) end
  for _, at in ipairs({sid, now_sid}) do
    if type(at) == 'string' and redis.call('XPENDING', KEYS[1], group, at, at, 1, consumer)[1]
    then
      return true
    end
  end
  return false
end
for i = last + 2, leases, 2 do
  local member = ARGV[i + 1]
  local sid = stale_sid[member]
  if settled[member] or not sid or not holds_again(member, sid) then
    redis.call('ZREM', KEYS[tonumber(ARGV[i])], member)
  end
end

-- Room freed: the oldest waiting jobs go back to their queue (as promote.lua puts a job back).
-- A record that cannot be read is dead-lettered as malformed; one that is gone is dropped.
for i = 1, #lanes, 2 do advance_lane(base, KEYS[2], KEYS[5], lanes[i], lanes[i + 1], now) end
local function release(waiting, count)
  if requeue_oldest(waiting, count, KEYS[2], KEYS[5], base) > 0 then
    redis.call('ZADD', KEYS[7], 'XX', now, string.match(waiting, 'waiting:(.*)$'))
  end
end
for i = leases + 2, #ARGV, 2 do release(KEYS[tonumber(ARGV[i])], tonumber(ARGV[i + 1])) end
return stale
