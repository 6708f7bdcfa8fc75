#!lua
-- reclaim.lua: keep this worker's claims fresh, then take over deliveries whose worker died
-- or froze (one page, at most as many as the caller's free lanes can start).
-- KEYS[1] ready stream   KEYS[2] jobs hash   KEYS[3] dlq stream
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] min idle ms (the stall timeout)   ARGV[4] cursor
-- ARGV[5] page size: entries to take over at most (0: only keep the held claims fresh)
-- ARGV[6] stalls that make a job poison   ARGV[7] now_ms   ARGV[8] queue
-- ARGV[9] n, then n pairs: sid, claim token of a claim this worker holds (waiting for a lane
--   or being attempted)
-- returns: {next cursor, {sid, job id, webhook id, claim token, ...} taken over,
--           {job id, ...} dead as poison, {sid, ...} malformed, {sid, ...} deleted under us,
--           1 when entries idle past the stall timeout are left (from the next cursor on, or
--           anywhere with page size 0), else 0}
--
-- Held claims: a claim waits in the worker's memory (its inbox, then a lane) while Redis
-- counts its entry idle. Each held entry still pending for this consumer with its claim's
-- delivery count is re-claimed with JUSTID, which resets its idle time and keeps the count
-- (the claim token stays current), so neither this worker nor another takes over a claim
-- that a live worker holds. A worker that dies or freezes stops doing this, and its entries
-- go idle past the stall timeout.
--
-- The stall count lives in the job record: Redis's delivery counter restarts when a retry
-- re-adds the job as a new entry, so it cannot tell how often workers died on the job. Only a
-- takeover from another consumer counts as a stall; an entry of this consumer that it no
-- longer holds (its load failed, or its lane crashed) is taken back without one.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py). A poison job
-- of a FIFO lane releases it (_lane.lua), as a dead one does in settle.lua; a taken-over head
-- only changes consumer, so its lane still has one job in flight; a head whose record is gone
-- or unreadable (malformed) releases its lane too (release_lane).
-- include: _record.lua
-- include: _lane.lua
local group, consumer = ARGV[1], ARGV[2]
local count = tonumber(ARGV[5])

-- 1 when an entry idle past the stall timeout is pending from ``start`` on, else 0.
local function left(start)
  return #redis.call('XPENDING', KEYS[1], group, 'IDLE', ARGV[3], start, '+', 1)
end

local held = tonumber(ARGV[9] or '0')
for i = 10, 9 + 2 * held, 2 do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1, consumer)
  if p[1] and tostring(p[1][4]) == ARGV[i + 1] then
    redis.call('XCLAIM', KEYS[1], group, consumer, 0, ARGV[i], 'JUSTID')
  end
end
if count <= 0 then return {ARGV[4], {}, {}, {}, {}, left('0-0')} end

-- The idle entries from the cursor on, with their owners; the page starts at the first, so
-- entries that live workers keep fresh cost no round trip. XAUTOCLAIM then takes a prefix of
-- these (it stops early only after scanning ten entries per one taken).
local idle = redis.call('XPENDING', KEYS[1], group, 'IDLE', ARGV[3], ARGV[4], '+', count)
if #idle == 0 then return {'0-0', {}, {}, {}, {}, 0} end
local owner = {}
for _, e in ipairs(idle) do owner[e[1]] = e[2] end

local page = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, ARGV[3], idle[1][1],
                        'COUNT', count)
local threshold, now_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local taken, poison, malformed, missing, finished, released = {}, {}, {}, {}, {}, {}

for _, entry in ipairs(page[2]) do
  local sid, fields = entry[1], entry[2] or {}
  local f = {}
  for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
  local record = f.j and redis.call('HGET', KEYS[2], f.j)
  if is_locator(record) and f.w and f.t and f.e and f.p then
    -- Never attempted: its data is inline in the entry. Write the full record now, since
    -- the stall count (and the attempts to come) must outlive this entry.
    -- one put back after a pause says so ('wr') and when its publish was accepted ('c')
    local inline = {w = f.w, t = f.t, e = f.e, q = ARGV[8], s = 'queued', a = 0, k = 0,
                    c = tonumber(string.match(f.c or sid, '^(%d+)')), sid = sid, wr = f.wr}
    record = make_record(inline, f.p)
  end
  local meta, rest = split_record(record)
  if not meta then
    redis.call('XADD', KEYS[3], '*', 'raw', cjson.encode(f), 'r', 'malformed', 'sid', sid)
    malformed[#malformed + 1] = sid
    finished[#finished + 1] = sid
    if f.j then released[#released + 1] = {false, f.j} end
  else
    local stalled = owner[sid] ~= consumer
    if stalled then meta.k = (tonumber(meta.k) or 0) + 1 end
    if stalled and meta.k >= threshold then
      meta.s = 'dead'; meta.r = 'poison'; meta.f = now_ms; meta.n = nil
      meta.le = 'a worker died or stalled during this delivery ' .. meta.k .. ' times (poison)'
      meta.d = redis.call('XADD', KEYS[3], '*', 'j', f.j, 'r', 'poison')
      poison[#poison + 1] = f.j
      finished[#finished + 1] = sid
      if type(meta.ol) == 'string' then released[#released + 1] = {meta.ol, f.j} end
    else
      local p = redis.call('XPENDING', KEYS[1], group, sid, sid, 1)
      taken[#taken + 1] = sid; taken[#taken + 1] = f.j; taken[#taken + 1] = f.w
      taken[#taken + 1] = tostring(p[1][4])
    end
    redis.call('HSET', KEYS[2], f.j, cjson.encode(meta) .. rest)
  end
end

-- Entries deleted while pending leave the PEL here; orphans.lua then finds their jobs by id.
for _, sid in ipairs(page[3]) do missing[#missing + 1] = sid end
if #finished > 0 then
  redis.call('XACK', KEYS[1], group, unpack(finished))
  redis.call('XDEL', KEYS[1], unpack(finished))
end
local base = KEYS[2]:sub(1, -5)
for _, r in ipairs(released) do
  if r[1] then
    advance_lane(base, KEYS[2], KEYS[3], r[1], r[2], now_ms)
  else
    release_lane(base, KEYS[2], KEYS[3], r[2], now_ms)
  end
end
local more = 0
if page[1] ~= '0-0' then more = left(page[1]) end
return {page[1], taken, poison, malformed, missing, more}
