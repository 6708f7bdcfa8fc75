#!lua
-- relay_apply.lua: write a batch of another region's outbox entries (keys.py ``outbox``) into
-- this region's shard as jobs, each exactly as publish.lua writes a local one, at most once
-- per job id (the relay is at-least-once; this makes it idempotent).
-- KEYS[1] jobs hash   KEYS[2] webhooks hash   KEYS[3] versions hash   KEYS[4] the relay fence
-- of the source region (keys.py ``relay_fence``)   KEYS[5] dlq stream   KEYS[6] the source's
-- pipelined generation (keys.py ``relay_line``)
-- ARGV[1] the relay's token '<incarnation>:<epoch>'; ARGV[2] how the batch was sent: '-' alone
--   (no other batch of the relay in flight), '+' .. generation the first batch of a generation
--   pipelined on one connection, '=' .. generation a later one (the generation ending in
--   '#<n>', the batch's number in it: '=' requires batch n - 1 applied); then 9 words per entry, in
--   outbox order:
--   job id, webhook id, tenant, event type, stream (Q, Q:high, Q:low), created ms (the
--   publisher's clock: checked, not used), due ms (0: now), payload, ordering ('' not FIFO,
--   '-' the keyless lane, '=' .. key)
-- The fence comes first: a token of the incarnation the fence holds with a lower epoch is
-- refused whole ({-1, fence}: a newer holder applied here, so this one is a paused old
-- holder); any other token is recorded. Then the generation: a batch sent alone deletes it,
-- a first batch sets it once applied whole (and so does a later batch: a batch is applied
-- with it unset, so an error raised mid-way leaves it unset), a later batch whose generation
-- is not the one set is refused whole
-- ({-3}): a batch before it stopped short (below), or a newer generation started, so applying
-- it could put its entries before ones still to come. Then per entry, in order:
-- * a job this shard has (its id in the jobs hash, whatever its state) is skipped;
-- * an entry that cannot be a job (a field missing or garbled) is dead-lettered here as
--   malformed ({raw, r}, as claim.lua does with an unreadable entry), never half-written;
-- * a webhook this shard has no record of: with a tombstone in the versions hash (deleted) the
--   job is written all the same (the gate dead-letters it webhook_deleted, as a local publish
--   racing a delete); without one, its record has not been replicated here yet: nothing from
--   this entry on is applied ({-2, index, ...}; the generation is deleted, refusing the
--   batches sent behind this one), the relay retries the rest shortly;
-- * else the job is written with this Redis's clock (created now): due later, a full record
--   and the delayed zset; now, an inline ready-stream entry and a locator; FIFO (ordering),
--   a full record pushed on its lane, only the lane's head in a stream or zset, the lanes'
--   bookkeeping by lane_joined. A write that fails (a key of the wrong type) undoes that
--   entry's writes and the error is returned (the entries before it stay applied; the
--   generation is deleted).
-- returns: {1, applied, skipped, malformed}, {-2, index of the entry stopped at (1-based),
--          applied, skipped, malformed}, {-1, fence token}, or {-3} (a later batch refused)
-- include: _record.lua
-- include: _lane.lua
local token = ARGV[1]
local incarnation, epoch = string.match(token, '^(.+):(%d+)$')
if not incarnation then return redis.error_reply('ERR relay_apply.lua: malformed token') end
local fence = redis.call('GET', KEYS[4])
if fence ~= token then
  local held_incarnation, held_epoch = string.match(fence or '', '^(.+):(%d+)$')
  if held_incarnation == incarnation and tonumber(held_epoch) > tonumber(epoch) then
    return {-1, fence}
  end
  redis.call('SET', KEYS[4], token)
end
local sent, generation = ARGV[2], nil
if sent ~= '-' then
  generation = string.sub(sent, 2)
  if string.sub(sent, 1, 1) == '=' then
    -- '<generation>#<n>': batch n - 1 must be the last applied (one turned away unrun, out of
    -- memory or busy, changed nothing here); without '#<n>', the generation itself
    local name, n = string.match(generation, '^(.*)#(%d+)$')
    local before = name and (name .. '#' .. (tonumber(n) - 1)) or generation
    if redis.call('GET', KEYS[6]) ~= before then return {-3} end
  end
end
-- Unset while the entries are written, set again only once all are: a write error raised
-- mid-way (not returned) leaves it unset too, so no later batch passes this one.
redis.call('DEL', KEYS[6])

local jobs, base = KEYS[1], KEYS[1]:sub(1, -5)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local applied, skipped, malformed = 0, 0, 0

local function failed(reply) return type(reply) == 'table' and reply.err end

-- Whether the fields can make a job (publish.lua and model.py allow what these match).
local function valid(j, w, tenant, e, q, c, n, o)
  return string.match(j, '^job_[0-9a-z]+[%.0-9]*~[a-z][a-z0-9_]*$')
    and string.match(w, '^wh_[0-9a-z]+[%.0-9]*$')
    and string.match(tenant, '^%S+$') and string.match(e, '^%S+$')
    and (string.match(q, '^[a-z0-9][a-z0-9_-]*$') or string.match(q, '^[a-z0-9][a-z0-9_-]*:high$')
         or string.match(q, '^[a-z0-9][a-z0-9_-]*:low$'))
    and string.match(c, '^%d+$') and string.match(n, '^%d+$')
    and (o == '' or o == '-' or string.match(o, '^=.'))
end

-- Write one job as publish.lua does; nil, or the error reply of a failed write (undone).
local function write(j, w, tenant, e, q, n, p, o)
  local ready, delayed = base .. 'q:' .. q .. ':ready', base .. 'q:' .. q .. ':delayed'
  local scheduled = n > now_ms
  if o ~= '' then
    local lane = base .. 'lane:' .. w
    if o ~= '-' then lane = lane .. ':' .. (#o - 1) .. ':' .. o:sub(2) end
    local meta = {w = w, t = tenant, e = e, q = q, s = 'queued', a = 0, k = 0, c = now_ms,
                  ol = lane}
    if scheduled then meta.s = 'scheduled'; meta.n = n end
    local len = redis.pcall('RPUSH', lane, j)
    if failed(len) then return len end
    local reply, undo
    if len > 1 then
      meta.wr = 'ordering'  -- behind the lane's head, in no stream until it is the head
    elseif scheduled then
      reply = redis.pcall('ZADD', delayed, n, j)
      undo = {'ZREM', delayed, j}
    else
      reply = redis.pcall('XADD', ready, '*', 'j', j, 'w', w)
      if not failed(reply) then meta.sid = reply; undo = {'XDEL', ready, reply} end
    end
    if not failed(reply) then reply = redis.pcall('HSET', jobs, j, make_record(meta, p)) end
    if failed(reply) then
      redis.call('RPOP', lane)
      if undo then redis.pcall(unpack(undo)) end
      return reply
    end
    local joined, err = pcall(lane_joined, base, lane, j, len, math.max(now_ms, n))
    if not joined then
      if len == 1 then redis.pcall('HDEL', base .. 'lanes:heads', j) end
      redis.call('HDEL', jobs, j)
      redis.call('RPOP', lane)
      if undo then redis.pcall(unpack(undo)) end
      return type(err) == 'table' and err or redis.error_reply(tostring(err))
    end
  elseif scheduled then
    local meta = {w = w, t = tenant, e = e, q = q, s = 'scheduled', a = 0, k = 0, c = now_ms,
                  n = n}
    local reply = redis.pcall('HSET', jobs, j, make_record(meta, p))
    if failed(reply) then return reply end
    reply = redis.pcall('ZADD', delayed, n, j)
    if failed(reply) then redis.call('HDEL', jobs, j); return reply end
  else
    -- The job travels inline in its entry; the record is only a locator until an outcome.
    local sid = redis.pcall('XADD', ready, '*', 'j', j, 'w', w, 't', tenant, 'e', e, 'p', p)
    if failed(sid) then return sid end
    local reply = redis.pcall('HSET', jobs, j, make_locator(q, sid, j))
    if failed(reply) then redis.call('XDEL', ready, sid); return reply end
  end
  return nil
end

local index = 0
for i = 3, #ARGV - 8, 9 do
  index = index + 1
  local j, w, tenant, e, q, c, n, p, o = unpack(ARGV, i, i + 8)
  if not valid(j, w, tenant, e, q, c, n, o) then
    local raw = cjson.encode({j = j, w = w, t = tenant, e = e, q = q, c = c, n = n, o = o,
                              p = string.sub(p, 1, 200)})
    redis.call('XADD', KEYS[5], '*', 'raw', raw, 'r', 'malformed')
    malformed = malformed + 1
  elseif redis.call('HEXISTS', jobs, j) == 1 then
    skipped = skipped + 1
  else
    if redis.call('HEXISTS', KEYS[2], w) == 0 then
      local version = redis.call('HGET', KEYS[3], w)
      if not (version and string.sub(version, -2) == ' -') then
        return {-2, index, applied, skipped, malformed}
      end
    end
    local err = write(j, w, tenant, e, q, tonumber(n), p, o)
    if err then return err end
    applied = applied + 1
  end
end
if generation then redis.call('SET', KEYS[6], generation) end
return {1, applied, skipped, malformed}
