#!lua
-- publish.lua: fan an event out to the tenant's matching webhooks, one job each, atomically.
-- A job to deliver now is one stream entry carrying its data, plus a locator in the jobs hash
-- (a few bytes naming the entry, _record.lua's make_locator); a scheduled job is a full
-- record plus its due time in the zset.
-- KEYS[1] tenant routing hash   KEYS[2] jobs hash   KEYS[3] idempotency key (used when the TTL
-- is > 0)   KEYS[4] the fingerprint beside it (same use)
-- KEYS[5], KEYS[6] ready stream and delayed zset of the first queue in ARGV[2] (of its stream
-- for this event's priority), then the same pair for each further queue (a queue not passed
-- gets its names built here); after them, only when the dedup window (ARGV[1]) is > 0: the
-- event's dedup key, then this minute's stats hash
-- ARGV[1] the event, its words separated by one space (none holds white space; '-' is an
--   optional word left out): job id prefix (ids are prefix .. n), event id, tenant id, event
--   type, now_ms, due_ms (0: deliver now), idempotency TTL in seconds (0: none), only this
--   webhook id ('-' fans out by subscription), the request's fingerprint (hex; '-' without an
--   idempotency key), and '1' when this is another shard's part of an event whose id shard 0's
--   part decided (new or repeat), else '-': then a record here naming that event is a repeat,
--   one naming another event is stale (the key's earlier use, whose record on shard 0 expired
--   first) and is replaced; the fingerprint was checked on shard 0. The same holds for the
--   dedup key, but for a newer event's (this part ran late), which stays, and this event's
--   jobs are written only if its first record is not here yet. Then the dedup window in
--   seconds (0: off; never with an idempotency key). Then the ordering key: '=' then the key,
--   or '-' for none (a FIFO webhook's keyless lane). Last, this Redis's region ('-' without
--   [regions]): then every job id ends in '~' and the region that will hold it (below).
-- ARGV[2] the queue names whose keys follow KEYS[4], space-separated
-- ARGV[3] their streams for this priority (``Q``, ``Q:high`` or ``Q:low``), space-separated
-- ARGV[4] payload (JSON bytes, stored as they are)
-- ARGV[5] (with a dedup window) the stats hash's TTL in seconds
-- ARGV[6] (with a dedup window) this event's stream priority and due_ms ('high 0'), stored in
--   the dedup key after the answer and a newline: another shard's part completing the event
--   (a duplicate after a failed shard) takes them from shard 0's key, not from the duplicate
-- (one word for the small arguments: a publish is mostly the Redis client's cost per argument)
-- returns: {1, answer} for a new event, {0, answer} for a repeated idempotency key with the same
--          fingerprint, {-2, answer} for one first used with another fingerprint (nothing is
--          written), {2, stored} when the dedup key holds an identical event's answer (a
--          duplicate: nothing is written but the stats hash's ``deduplicated`` count, and that
--          only when this part decides: not ``decided``). ARGV[2] names at least one queue:
--          the others' keys are built from it, so a publish is never redone for a new queue.
--          answer = "event_id job_id webhook_id job_id webhook_id ..."; stored = answer, then
--          (keys written since ARGV[6]) a newline and the first event's ARGV[6]
-- The idempotency record (KEYS[3]) is the answer alone, as every release has written and read
-- it; the fingerprint is KEYS[4], written with it and with the same TTL. A record without one
-- (written before fingerprints, or by a release that does not write them) is a repeat of any
-- request, as it was then.
-- Reads come first, so a key of the wrong type fails before anything is written; a failed
-- write after the first is undone before the error is returned (all jobs or none).
-- Dedup costs one command on the accepted path: the answer is known before any write (job ids
-- are prefix .. n), so SET NX of the dedup key both claims the event and stores its answer;
-- when the key exists, GET answers the duplicate. A failed write later deletes the key again.
-- Records and locators are written as _record.lua says (the format: dispatcher/queue/codec.py).
-- A route may carry a payload filter ('f', only when the webhook has one: other routes are
-- as before): a webhook subscribed by event type whose filter does not match gets no job. The
-- payload is decoded at most once per call, and only when some subscribed route has a filter.
-- A webhook with ordering fifo (its route has "o") gets a full record whose 'ol' names its lane
-- (_lane.lua): only the lane's head goes into the stream (an entry {j, w}) or the delayed zset;
-- the lanes' bookkeeping (lane_joined) is written once every other write has succeeded.
-- Regions (docs/regions.md): a route naming another region ('r', not this Redis's) gets no
-- queue, record or lane here. Its job is one entry of this shard's outbox stream for that
-- region (keys.py: outbox:R, built from the key base as the q: names are), {j, w, t, e, q, c,
-- n, p} and, for a FIFO route, o (the ordering key word as above), written and undone with
-- the local jobs, so the local jobs and the outbox entries land together or not at all. The
-- relay (queue/outbox.py) moves it into that region's Redis. Its job id ends in '~R', a
-- local job's in '~' and this region; answers, idempotency and dedup keys hold both.
-- include: _record.lua
-- include: _filter.lua
-- include: _lane.lua
local prefix, event_id, tenant, event_type, now_ms, due_ms, ttl, only, request, decided, window,
      okey, home = string.match(ARGV[1],
      '^(%S+) (%S+) (%S+) (%S+) (%d+) (%-?%d+) (%d+) (%S+) (%S+) (%S+) (%d+) (%S+) (%S+)$')
if not prefix then return redis.error_reply('ERR publish.lua: malformed ARGV[1]') end
if home == '-' then home = nil end
local payload = ARGV[4]
local use_idem = tonumber(ttl) > 0
if use_idem then
  local first = redis.call('GET', KEYS[3])
  if first then
    if decided ~= '1' then
      local fingerprint = redis.call('GET', KEYS[4])
      if fingerprint and fingerprint ~= request then return {-2, first} end
      return {0, first}
    end
    if string.match(first, '^%S*') == event_id then return {0, first} end
  end
end

if only == '-' then only = '' end
local queues, nq = {}, 0
local streams = {}
for stream in string.gmatch(ARGV[3], '%S+') do streams[#streams + 1] = stream end
local suffix  -- this priority's stream suffix ('', ':high' or ':low'), from the first queue
for name in string.gmatch(ARGV[2], '%S+') do
  queues[name] = {ready = KEYS[5 + 2 * nq], delayed = KEYS[6 + 2 * nq], added = {}, due = {},
                  stream = streams[nq + 1]}
  suffix = suffix or string.sub(streams[nq + 1], #name + 1)
  nq = nq + 1
end
-- A queue whose keys were not passed: its names are built from the key base (all of a shard's
-- keys share its hash tag, so this stays cluster-safe), and the publish is never redone.
local base = KEYS[2]:sub(1, -5)
local function queue_named(name)
  if not queues[name] and suffix then
    local stream = name .. suffix
    queues[name] = {ready = base .. 'q:' .. stream .. ':ready',
                    delayed = base .. 'q:' .. stream .. ':delayed', added = {}, due = {},
                    stream = stream}
  end
  return queues[name]
end
local routes = redis.call('HGETALL', KEYS[1])
local matched = {}
local doc  -- the decoded payload, once a filter needs it
for i = 1, #routes, 2 do
  local webhook_id = routes[i]
  local route = cjson.decode(routes[i + 1])
  local wanted
  if only ~= '' then
    wanted = webhook_id == only
  else
    wanted = false
    if route.on then
      for _, t in ipairs(route.e) do
        if t == '*' or t == event_type then wanted = true; break end
      end
    end
  end
  if wanted and route.f and only == '' then
    if doc == nil then
      local ok, decoded = pcall(cjson.decode, payload)
      doc = ok and decoded or false  -- false: not JSON (never from the Client), no path present
    end
    wanted = filter_match(route.f, doc or nil)
  end
  if wanted then
    if not queue_named(route.q) then
      return redis.error_reply('ERR publish.lua: no queue in ARGV[2]')
    end
    matched[#matched + 1] = {webhook_id, route.q, route.o, home and route.r}
  end
end
table.sort(matched, function(x, y) return x[1] < y[1] end)

local created, due_word = now_ms, due_ms  -- as given, for outbox entries
now_ms, due_ms = tonumber(now_ms), tonumber(due_ms)
local scheduled = due_ms > now_ms
local answer = {event_id}  -- then job id, webhook id: the n-th job's id is answer[2 * n]
local first_local  -- with regions, the first job written here (nil: every one is outboxed)
if home then
  for n, match in ipairs(matched) do
    local job_id = prefix .. n .. '~' .. (match[4] or home)
    if match[4] == home then match[4] = nil end  -- match[4]: another region, or nil
    if not (first_local or match[4]) then first_local = job_id end
    answer[#answer + 1] = job_id
    answer[#answer + 1] = match[1]
  end
else
  for n, match in ipairs(matched) do
    answer[#answer + 1] = prefix .. n
    answer[#answer + 1] = match[1]
  end
end
local joined = table.concat(answer, ' ')
local records = {}

local dedup
if window ~= '0' then
  dedup = KEYS[5 + 2 * nq]
  local stored = joined .. '\n' .. ARGV[6]
  if not redis.call('SET', dedup, stored, 'NX', 'EX', window) then
    local first = redis.call('GET', dedup)
    if decided ~= '1' then
      local stats = KEYS[6 + 2 * nq]
      redis.call('HINCRBY', stats, 'deduplicated', 1)
      redis.call('EXPIRE', stats, ARGV[5])
      return {2, first}
    end
    local named = string.match(first, '^%S*')
    if named == event_id then return {2, first} end
    -- Another event's key: an older one's (its shard 0 key expired first: written first), or
    -- a newer one's when this part runs late (shard 0 decided before its key expired). This
    -- event's jobs here are written once: not if its first record is here already. The key
    -- names the newest event (ids sort by time), whose duplicates then find it.
    -- (With regions, the first job written here: when every job went to an outbox, nothing
    -- here tells, and they are written again with the same ids, which the relay skips.)
    if not home then first_local = prefix .. '1' end
    if #matched > 0 and first_local and redis.call('HEXISTS', KEYS[2], first_local) == 1 then
      return {2, joined}
    end
    if event_id > named then
      redis.call('SET', dedup, stored, 'EX', window)
    else
      dedup = nil  -- the newer event's key stays, and a failed write below leaves it
    end
  end
end

-- cmd(key, ...) over the whole list, a few thousand arguments per call: Lua's unpack fails
-- past about 8000 (a tenant with thousands of matching webhooks). The first error reply is
-- returned (pcall: the caller undoes); lists of pairs stay whole (the step is even).
local function in_chunks(cmd, key, list)
  for i = 1, #list, 4000 do
    local reply = redis.pcall(cmd, key, unpack(list, i, math.min(i + 3999, #list)))
    if type(reply) == 'table' and reply.err then return reply end
  end
  return nil
end

-- Undo what this call wrote, so a failed write leaves no half of the fan-out behind.
local pushed = {}  -- the lanes this call pushed a job onto, in order
local outboxed  -- outbox stream, entry id, ...: the entries this call added (nil: none)
local function undo(reply, hashed, zsets)
  for i = #pushed, 1, -1 do redis.call('RPOP', pushed[i]) end
  if outboxed then
    for i = 1, #outboxed, 2 do redis.call('XDEL', outboxed[i], outboxed[i + 1]) end
  end
  for _, q in pairs(queues) do
    in_chunks('XDEL', q.ready, q.added)
  end
  if hashed then
    local ids = {}
    for i = 1, #records, 2 do ids[#ids + 1] = records[i] end
    in_chunks('HDEL', KEYS[2], ids)
  end
  for _, key in ipairs(zsets) do
    local ids = {}
    for i = 1, #records, 2 do ids[#ids + 1] = records[i] end
    in_chunks('ZREM', key, ids)
  end
  if dedup then redis.call('DEL', dedup) end
  return redis.error_reply(reply.err)
end

for n, match in ipairs(matched) do
  local webhook_id, q, job_id = match[1], queues[match[2]], answer[2 * n]
  if match[4] then
    -- Another region's webhook: an entry of its outbox, nothing here.
    local outbox = base .. 'outbox:' .. match[4]
    local entry = {'j', job_id, 'w', webhook_id, 't', tenant, 'e', event_type, 'q', q.stream,
                   'c', created, 'n', scheduled and due_word or '0'}
    if match[3] then entry[#entry + 1] = 'o'; entry[#entry + 1] = okey end  -- a FIFO route
    entry[#entry + 1] = 'p'; entry[#entry + 1] = payload
    local sid = redis.pcall('XADD', outbox, '*', unpack(entry))
    if type(sid) == 'table' and sid.err then return undo(sid, false, {}) end
    outboxed = outboxed or {}
    outboxed[#outboxed + 1] = outbox
    outboxed[#outboxed + 1] = sid
    outboxed[match[4]] = true  -- the regions written for, named in 'outboxes' at the end
  elseif match[3] then
    records[#records + 1] = job_id
    local meta = {w = webhook_id, t = tenant, e = event_type, q = q.stream, s = 'queued',
                  a = 0, k = 0, c = now_ms, ol = base .. 'lane:' .. webhook_id}
    if okey ~= '-' then meta.ol = meta.ol .. ':' .. (#okey - 1) .. ':' .. okey:sub(2) end
    if scheduled then meta.s = 'scheduled'; meta.n = due_ms end
    local len = redis.pcall('RPUSH', meta.ol, job_id)
    if type(len) == 'table' and len.err then return undo(len, false, {}) end
    pushed[#pushed + 1] = meta.ol
    pushed[meta.ol] = {job_id, len}
    if len > 1 then
      meta.wr = 'ordering'  -- behind the lane's head, in no stream until it is the head
    elseif scheduled then
      q.due[#q.due + 1] = due_ms; q.due[#q.due + 1] = job_id
    else
      local sid = redis.pcall('XADD', q.ready, '*', 'j', job_id, 'w', webhook_id)
      if type(sid) == 'table' and sid.err then return undo(sid, false, {}) end
      q.added[#q.added + 1] = sid
      meta.sid = sid
    end
    records[#records + 1] = make_record(meta, payload)
  elseif scheduled then
    records[#records + 1] = job_id
    local meta = {w = webhook_id, t = tenant, e = event_type, q = q.stream, s = 'scheduled',
                  a = 0, k = 0, c = now_ms, n = due_ms}
    records[#records + 1] = make_record(meta, payload)
    q.due[#q.due + 1] = due_ms; q.due[#q.due + 1] = job_id
  else
    records[#records + 1] = job_id
    -- The job travels inline in its entry; the record is only a locator until an outcome.
    local sid = redis.pcall('XADD', q.ready, '*', 'j', job_id, 'w', webhook_id, 't', tenant,
                            'e', event_type, 'p', payload)
    if type(sid) == 'table' and sid.err then return undo(sid, false, {}) end
    q.added[#q.added + 1] = sid
    records[#records + 1] = make_locator(q.stream, sid, job_id)
  end
end

if #records > 0 then
  local reply = in_chunks('HSET', KEYS[2], records)
  if reply then return undo(reply, true, {}) end
  local zsets = {}
  for _, q in pairs(queues) do
    if #q.due > 0 then
      reply = in_chunks('ZADD', q.delayed, q.due)
      if reply then return undo(reply, true, {q.delayed, unpack(zsets)}) end
      zsets[#zsets + 1] = q.delayed
    end
  end
end
for _, lane in ipairs(pushed) do
  local job_id, len = unpack(pushed[lane])
  lane_joined(KEYS[2]:sub(1, -5), lane, job_id, len, math.max(now_ms, due_ms))
end
if outboxed then
  -- The destinations this shard has outboxes for, so status and the backlog alerts measure
  -- one even for a region no longer in [regions] (nothing relays it: it must show). Only a
  -- measure: a failure here (a key of the wrong type) fails no publish.
  local dests = {}
  for key in pairs(outboxed) do
    if type(key) == 'string' then dests[#dests + 1] = key end
  end
  redis.pcall('SADD', base .. 'outboxes', unpack(dests))
end
if use_idem then
  -- one deadline for both (two EX could fall either side of a millisecond): the fingerprint
  -- lives exactly as long as the record it guards
  local now = redis.call('TIME')
  local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ttl) * 1000
  redis.call('SET', KEYS[3], joined, 'PXAT', at)
  redis.call('SET', KEYS[4], request, 'PXAT', at)
end
return {1, joined}
