#!lua
-- reclaim.lua: take over deliveries whose worker died or froze (one XAUTOCLAIM page).
-- KEYS[1] ready stream   KEYS[2] jobs hash   KEYS[3] dlq stream
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] min idle ms (the stall timeout)   ARGV[4] cursor
-- ARGV[5] page size   ARGV[6] stalls that make a job poison   ARGV[7] now_ms   ARGV[8] queue
-- returns: {next cursor, {sid, job id, webhook id, claim token, ...} taken over,
--           {job id, ...} dead as poison, {sid, ...} malformed, {sid, ...} deleted under us}
-- The stall count lives in the job record: Redis's delivery counter restarts when a retry
-- re-adds the job as a new entry, so it cannot tell how often workers died on the job.
local page = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                        'COUNT', ARGV[5])
local threshold, now_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local taken, poison, malformed, missing, finished = {}, {}, {}, {}, {}

for _, entry in ipairs(page[2]) do
  local sid, fields = entry[1], entry[2] or {}
  local f = {}
  for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
  local record = f.j and redis.call('HGET', KEYS[2], f.j)
  if record and string.sub(record, 1, 1) == '@' and f.w and f.t and f.e and f.p then
    -- Never attempted: its data is inline in the entry. Write the full record now, since
    -- the stall count (and the attempts to come) must outlive this entry.
    local inline = {w = f.w, t = f.t, e = f.e, q = ARGV[8], s = 'queued', a = 0, k = 0,
                    c = tonumber(string.match(sid, '^(%d+)')), sid = sid}
    record = cjson.encode(inline) .. '\n' .. f.p
  end
  local cut = record and string.find(record, '\n', 1, true)
  local ok, meta = false, nil
  if cut then ok, meta = pcall(cjson.decode, string.sub(record, 1, cut - 1)) end
  if not ok or type(meta) ~= 'table' then
    redis.call('XADD', KEYS[3], '*', 'raw', cjson.encode(f), 'r', 'malformed', 'sid', sid)
    malformed[#malformed + 1] = sid
    finished[#finished + 1] = sid
  else
    meta.k = (tonumber(meta.k) or 0) + 1
    if meta.k >= threshold then
      meta.s = 'dead'; meta.r = 'poison'; meta.f = now_ms; meta.n = nil
      meta.le = 'a worker died or stalled during this delivery ' .. meta.k .. ' times (poison)'
      meta.d = redis.call('XADD', KEYS[3], '*', 'j', f.j, 'r', 'poison')
      poison[#poison + 1] = f.j
      finished[#finished + 1] = sid
    else
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], sid, sid, 1)
      taken[#taken + 1] = sid; taken[#taken + 1] = f.j; taken[#taken + 1] = f.w
      taken[#taken + 1] = tostring(p[1][4])
    end
    redis.call('HSET', KEYS[2], f.j, cjson.encode(meta) .. string.sub(record, cut))
  end
end

-- Entries deleted while pending leave the PEL here; orphans.lua then finds their jobs by id.
for _, sid in ipairs(page[3]) do missing[#missing + 1] = sid end
if #finished > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(finished))
  redis.call('XDEL', KEYS[1], unpack(finished))
end
return {page[1], taken, poison, malformed, missing}
