#!lua
-- settle.lua: write the outcomes of a batch of claimed jobs, fenced by their claims.
-- KEYS[1] ready stream   KEYS[2] jobs hash   KEYS[3] delayed zset   KEYS[4] done zset
-- KEYS[5] dlq stream   KEYS[6] breakers hash
-- KEYS[7..] parked zsets ('...:parked:<webhook id>') and lease zsets of the batch's webhooks
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] lowest sid   ARGV[4] highest sid
-- ARGV[5] most entries this consumer may hold pending (bounds the fence read)
-- ARGV[6] n, the number of jobs, then 8 values per job: sid, job id, claim token (the entry's
--   delivery count when claimed), kind ('D' delivered, 'R' retry or wait, 'X' dead, 'P' parked
--   while the webhook's breaker is open), record, score (finished, due or parked ms),
--   the dead reason (X) or the index in KEYS of the webhook's parked zset (P),
--   the attempt as JSON (appended as late when the claim is stale)
-- then pairs: index in KEYS of a lease zset, job id: the in-flight leases to release
-- returns: the ids of jobs whose claim was stale (their outcome is only logged as late)
--
-- The fence: a claim is current while the entry is pending for this consumer with the
-- delivery count it had when claimed. XAUTOCLAIM moves it to another consumer and bumps the
-- count, so a worker that froze past the stall timeout finds its claim gone and writes
-- nothing but a late attempt into the history.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[2])
local held = {}
for _, p in ipairs(pending) do held[p[1]] = tostring(p[4]) end

local records, done, delayed, acked, stale = {}, {}, {}, {}, {}
local last = 6 + 8 * tonumber(ARGV[6])
for i = 7, last, 8 do
  local sid, job_id, token, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local record, score = ARGV[i + 4], ARGV[i + 5]
  if held[sid] ~= token then
    stale[#stale + 1] = job_id
    local current = redis.call('HGET', KEYS[2], job_id)
    if current then
      local cut = string.find(current, '\n', 1, true)
      local meta = cjson.decode(string.sub(current, 1, cut - 1))
      if type(meta.h) ~= 'table' then meta.h = {} end
      meta.h[#meta.h + 1] = cjson.decode(ARGV[i + 7])
      redis.call('HSET', KEYS[2], job_id, cjson.encode(meta) .. string.sub(current, cut))
    end
  else
    held[sid] = nil
    acked[#acked + 1] = sid
    if kind == 'X' then
      local dlq_id = redis.call('XADD', KEYS[5], '*', 'j', job_id, 'r', ARGV[i + 6])
      local cut = string.find(record, '\n', 1, true)
      local meta = cjson.decode(string.sub(record, 1, cut - 1))
      meta.d = dlq_id
      record = cjson.encode(meta) .. string.sub(record, cut)
    elseif kind == 'R' then
      delayed[#delayed + 1] = score; delayed[#delayed + 1] = job_id
    elseif kind == 'P' then
      -- Parked only while the breaker exists: if it closed and was forgotten meanwhile (or
      -- the webhook went), nothing would release the job, so it goes back to its queue.
      local parked = KEYS[tonumber(ARGV[i + 6])]
      if redis.call('HEXISTS', KEYS[6], string.match(parked, 'parked:(.*)$')) == 1 then
        redis.call('ZADD', parked, score, job_id)
      else
        delayed[#delayed + 1] = score; delayed[#delayed + 1] = job_id
      end
    else
      done[#done + 1] = score; done[#done + 1] = job_id
    end
    records[#records + 1] = job_id; records[#records + 1] = record
  end
end

if #records > 0 then redis.call('HSET', KEYS[2], unpack(records)) end
if #done > 0 then redis.call('ZADD', KEYS[4], unpack(done)) end
if #delayed > 0 then redis.call('ZADD', KEYS[3], unpack(delayed)) end
if #acked > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(acked))
  redis.call('XDEL', KEYS[1], unpack(acked))
end
for i = last + 1, #ARGV, 2 do redis.call('ZREM', KEYS[tonumber(ARGV[i])], ARGV[i + 1]) end
return stale
