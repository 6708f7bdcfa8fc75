#!lua
-- orphans.lua: find jobs that wait for a ready-stream entry which no longer exists (deleted
-- outside dispatcher by XDEL or XTRIM, or lost with part of Redis's data), one HSCAN page of
-- the jobs hash per call, so many calls cover the whole hash without a long pause.
-- KEYS[1] jobs hash   KEYS[2] dlq stream
-- ARGV[1] HSCAN cursor   ARGV[2] page size   ARGV[3] key base ('<prefix>:{tag}:'; ready streams
-- are base..'q:'..stream..':ready', as in keys.py)   ARGV[4] consumer group   ARGV[5] now ms
-- returns: {next cursor, {job id, ...} put back in their stream, {job id, ...} dead-lettered}
--
-- A job whose entry is still pending (claimed) is left alone: its worker may be delivering it,
-- and once reclaim finds the entry gone it leaves the PEL and the next pass sees it.
-- A queued job with a full record is put back as a new entry. A job that was never attempted
-- travelled inline in its entry, so its payload went with it: it is dead-lettered as
-- entry_missing, by id, so the loss is visible rather than a job queued forever.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local base, group, now = ARGV[3], ARGV[4], tonumber(ARGV[5])
local requeued, dead = {}, {}

local function gone(ready, sid)
  if #redis.call('XRANGE', ready, sid, sid) > 0 then return false end
  local ok, pending = pcall(redis.call, 'XPENDING', ready, group, sid, sid, 1)
  return not (ok and #pending > 0)
end

local items = page[2]
for i = 1, #items, 2 do
  local job_id, record = items[i], items[i + 1]
  if is_locator(record) then
    local stream, sid = parse_locator(record, job_id)
    if stream and gone(base .. 'q:' .. stream .. ':ready', sid) then
      -- a held job's locator names its webhook's held stream 'W|S' (_held.lua): its webhook
      -- is W, its queue S
      local webhook_id, ready = string.match(stream, '^([^|]*)|(.+)$')
      local meta = {w = webhook_id or '', t = '', e = '', q = ready or stream,
                    s = 'dead', a = 0, k = 0, f = now,
                    c = tonumber(string.match(sid, '^(%d+)')) or now, r = 'entry_missing',
                    le = 'its stream entry was deleted outside dispatcher before any attempt; '
                         .. 'its payload went with it'}
      meta.d = redis.call('XADD', KEYS[2], '*', 'j', job_id, 'r', 'entry_missing')
      redis.call('HSET', KEYS[1], job_id, make_record(meta, ''))
      dead[#dead + 1] = job_id
    end
  elseif string.find(record, '"s":"queued"', 1, true) then  -- most records are finished:
    -- only a queued one can wait for an entry, so the others are not decoded (both encoders
    -- write the meta with no spaces; the payload may contain it too, hence the checks below)
    local meta, rest = split_record(record)
    if meta and meta.s == 'queued' and meta.sid and meta.q then
      local ready = base .. 'q:' .. meta.q .. ':ready'
      if gone(ready, meta.sid) then
        meta.sid = redis.call('XADD', ready, '*', 'j', job_id, 'w', meta.w)
        redis.call('HSET', KEYS[1], job_id, cjson.encode(meta) .. rest)
        requeued[#requeued + 1] = job_id
      end
    end
  end
end
return {page[1], requeued, dead}
