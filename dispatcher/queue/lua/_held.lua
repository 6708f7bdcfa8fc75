-- _held.lua: the jobs of paused webhooks (pauses.py), written once for settle.lua (which holds
-- them) and pause_release.lua (which puts them back). Not a script of its own: included after
-- _record.lua and _lane.lua (it uses both).
--
-- A held job has one of two forms:
-- * compact (a job never attempted, whose data travels in its ready-stream entry): its entry,
--   fields {j, t, e, p} (the webhook is the stream's own), at the same entry id in the held
--   stream base..'q:'..W..'|'..S..':ready' of its webhook W and ready stream S, while the
--   jobs hash keeps a locator (_record.lua's make_locator) that names stream 'W|S'. So it
--   costs what the queued job cost: a locator and a stream entry, not a record;
-- * full (any other job, and every held job of the releases before this one): its record in
--   the jobs hash and a member of the zset base..'held:'..W, scored by accepted order.
-- The set base..'holders' names each webhook with a held zset ('W'), and base..'holders:streams'
-- each held stream ('W|S'): apart, as the release before this one walks 'holders' and would
-- drop from it any name that is not a webhook's.
-- Both sort by accepted order (order_key): a held stream's entries keep their ready-stream
-- ids, which Redis gave in the order the publishes were accepted.

-- Most entries of a held stream set aside to add an earlier one (settled after them, by
-- another worker) at its own id; beyond it, that job is held in the full form.
local HELD_REORDER_MAX = 256

-- Where an entry id 'ms-seq' sorts among held jobs: outcomes.py ``_accepted``'s order.
local function order_key(sid)
  local ms, seq = string.match(sid, '^(%d+)%-(%d+)$')
  return tonumber(ms) * 1000 + math.min(tonumber(seq), 999)
end

-- The webhook id of a holders member, and the ready stream of a held stream's ('' for a zset).
local function holder_parts(member)
  local webhook_id, stream = string.match(member, '^([^|]*)|(.+)$')
  if webhook_id then return webhook_id, stream end
  return member, ''
end

-- Add {fields} at entry id 'sid' of the held stream 'key', before the entries of later ids
-- (set aside and added back at their own ids). Returns false when more than
-- HELD_REORDER_MAX come after it.
local function add_in_order(key, sid, fields)
  local added = redis.pcall('XADD', key, sid, unpack(fields))
  if type(added) ~= 'table' or not added.err then return true end
  if #redis.call('XRANGE', key, sid, sid) > 0 then return true end  -- already there
  local later = redis.call('XRANGE', key, '(' .. sid, '+', 'COUNT', HELD_REORDER_MAX + 1)
  if #later > HELD_REORDER_MAX then return false end
  local ids = {}
  for i, e in ipairs(later) do ids[i] = e[1] end
  if #ids > 0 then redis.call('XDEL', key, unpack(ids)) end
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  redis.call('XSETID', key, top and top[1] or '0-1')
  redis.call('XADD', key, sid, unpack(fields))
  for _, e in ipairs(later) do redis.call('XADD', key, e[1], unpack(e[2])) end
  return true
end

-- Hold a claimed job of webhook 'webhook_id' in the compact form, if it has it: its record in
-- 'jobs' is a locator and its entry 'sid' of the ready stream 'stream' (key base..'q:'..
-- stream..':ready') is inline. Returns the locator to write in the jobs hash, or nil (the
-- caller then holds the full record). The ready entry itself is left for the caller to delete.
local function hold_compact(base, jobs, stream, sid, job_id, webhook_id)
  if not is_locator(redis.call('HGET', jobs, job_id)) then return nil end
  local entry = redis.call('XRANGE', base .. 'q:' .. stream .. ':ready', sid, sid)[1]
  if not entry then return nil end
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  if f.j ~= job_id or f.w ~= webhook_id or not (f.t and f.e and f.p) then return nil end
  local name = webhook_id .. '|' .. stream
  -- one held before and put back keeps the entry id its publish got ('c', release_one)
  local at = f.c and string.match(f.c, '^%d+%-%d+$') or sid
  if not add_in_order(base .. 'q:' .. name .. ':ready', at, {'j', f.j, 't', f.t, 'e', f.e,
                                                             'p', f.p}) then
    return nil
  end
  redis.call('SADD', base .. 'holders:streams', name)
  return make_locator(name, at, job_id)
end

-- Dead-letter (to 'dlq') a held job whose data cannot be read, as malformed; a FIFO lane's
-- head releases its lane (_lane.lua's index of heads), so the lane's next job goes on.
local function held_malformed(base, jobs, dlq, job_id, raw, now_ms)
  redis.call('XADD', dlq, '*', 'raw', cjson.encode({j = job_id, record = string.sub(raw, 1, 200)}),
             'r', 'malformed')
  release_lane(base, jobs, dlq, job_id, now_ms)
end

-- The webhook's jobs put back since its resume: by ready stream, the id of the last one (the
-- newest there). Until the group of each stream has claimed past it, jobs older in that stream
-- than those put back (queued while paused, not yet gated) may still be unclaimed: the webhook
-- keeps its drain mark (pause_release.lua), so its gate holds them behind the backlog.
local function put_back_at(base, webhook_id, stream, sid)
  redis.call('HSET', base .. 'resumed:' .. webhook_id, stream, sid)
end

-- Whether entry id 'a' comes before entry id 'b' of a stream.
local function id_before(a, b)
  local ams, aseq = string.match(a, '^(%d+)%-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)%-(%d+)$')
  if tonumber(ams) ~= tonumber(bms) then return tonumber(ams) < tonumber(bms) end
  return tonumber(aseq) < tonumber(bseq)
end

-- Whether every ready stream the webhook's jobs were put back in has been claimed past the
-- last of them by the consumer group 'group' (dispatcher's: its last delivered id; another
-- group on the stream, which dispatcher never reads with, does not count).
local function claimed_past(base, webhook_id, group)
  local key = base .. 'resumed:' .. webhook_id
  local at = redis.call('HGETALL', key)
  for i = 1, #at, 2 do
    local ready = base .. 'q:' .. at[i] .. ':ready'
    if redis.call('EXISTS', ready) == 1 then
      for _, info in ipairs(redis.call('XINFO', 'GROUPS', ready)) do
        local fields = {}
        for k = 1, #info, 2 do fields[info[k]] = info[k + 1] end
        if fields.name == group and id_before(fields['last-delivered-id'], at[i + 1]) then
          return false
        end
      end
    end
  end
  return true
end

-- Put one held job back at the end of its ready stream, as queued, saying it was held ('wr'
-- 'paused', in its record or its entry), so the gate of a draining webhook lets it through. item: {order, holders
-- member, job id (zset) or entry id (stream), entry fields (stream)}.
local function release_one(base, jobs, dlq, webhook_id, item, now_ms)
  local _, stream = holder_parts(item[2])
  if stream == '' then  -- the full form: requeue (_record.lua), or dead-lettered here
    local job_id = item[3]
    local record = redis.call('HGET', jobs, job_id)
    if not record then return release_lane(base, jobs, dlq, job_id, now_ms) end
    local meta = split_record(record)
    if meta and type(meta.w) == 'string' and meta.w ~= '' and type(meta.q) == 'string' then
      requeue(jobs, dlq, base, job_id)
      local back = split_record(redis.call('HGET', jobs, job_id))
      if back and type(back.sid) == 'string' then put_back_at(base, webhook_id, meta.q, back.sid) end
    else
      held_malformed(base, jobs, dlq, job_id, record, now_ms)
    end
    return
  end
  local f = {}
  for i = 1, #item[4], 2 do f[item[4][i]] = item[4][i + 1] end
  if f.j and f.t and f.e and f.p then
    -- 'c': the entry id its publish got (the held entry's), so it still says when it was
    -- accepted (codec.from_entry) and sorts there if held again
    local sid = redis.call('XADD', base .. 'q:' .. stream .. ':ready', '*', 'j', f.j,
                           'w', webhook_id, 't', f.t, 'e', f.e, 'p', f.p, 'wr', 'paused',
                           'c', item[3])
    redis.call('HSET', jobs, f.j, make_locator(stream, sid, f.j))
    put_back_at(base, webhook_id, stream, sid)
  else
    held_malformed(base, jobs, dlq, f.j or '', cjson.encode(f), now_ms)
  end
end

-- Put back up to 'count' of the webhook's held jobs, oldest (first accepted) first, from its
-- holders members 'members' (its held zset and held streams); returns how many.
local function release_held(base, jobs, dlq, webhook_id, members, count, now_ms)
  local items = {}
  for _, member in ipairs(members) do
    local _, stream = holder_parts(member)
    if stream == '' then
      local z = redis.call('ZRANGE', base .. 'held:' .. member, 0, count - 1, 'WITHSCORES')
      for i = 1, #z, 2 do items[#items + 1] = {tonumber(z[i + 1]), member, z[i]} end
    else
      for _, e in ipairs(redis.call('XRANGE', base .. 'q:' .. member .. ':ready', '-', '+',
                                    'COUNT', count)) do
        items[#items + 1] = {order_key(e[1]), member, e[1], e[2]}
      end
    end
  end
  table.sort(items, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] .. a[3] < b[2] .. b[3]
  end)
  local taken = {}  -- by member: the zset members or entry ids to remove
  for i = 1, math.min(count, #items) do
    local item = items[i]
    release_one(base, jobs, dlq, webhook_id, item, now_ms)
    taken[item[2]] = taken[item[2]] or {}
    table.insert(taken[item[2]], item[3])
  end
  for member, ids in pairs(taken) do
    local _, stream = holder_parts(member)
    if stream == '' then
      redis.call('ZREM', base .. 'held:' .. member, unpack(ids))
    else
      redis.call('XDEL', base .. 'q:' .. member .. ':ready', unpack(ids))
    end
  end
  return math.min(count, #items)
end

-- Whether the holders member's zset or stream holds no job; an empty held stream is deleted
-- (a stream outlives its last entry).
local function held_empty(base, member)
  local _, stream = holder_parts(member)
  if stream == '' then return redis.call('EXISTS', base .. 'held:' .. member) == 0 end
  local key = base .. 'q:' .. member .. ':ready'
  if redis.call('XLEN', key) > 0 then return false end
  redis.call('DEL', key)
  return true
end
