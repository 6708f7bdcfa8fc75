#!lua
-- registry_apply.lua: apply a batch of another region's webhook writes (queue/registry.py) to
-- this Redis's copy of the registry, then move the cursor on that region's registry stream.
-- A write is applied only when its version beats the one here (tombstones included): the
-- larger (v, origin) wins, v compared as a number, then origin as a string, so every region
-- ends with the same record whatever order writes arrive in (last writer wins). Version 0
-- (a record written before regions, read by a resync) is applied only where none is. The caller
-- computed each record as written here (the region filled in, this Redis's own draining mark
-- kept) from the record it read, which must still be there (compare-and-set).
-- KEYS[1] webhooks hash   KEYS[2] versions hash   KEYS[3] the set of queue names webhooks name
-- KEYS[4] the count of webhooks the queues set covers   KEYS[5] the cursor (registry:from:S)
-- then per write i: KEYS[4 + 2i] routing hash of the tenant in the record read here (or any
-- key of the shard when there is none), KEYS[5 + 2i] routing hash of the new record's tenant
-- (the first again for a delete)
-- ARGV[1] the cursor to set once every write is gone through ('' leaves it)
-- then per write i, 7 values from ARGV[2 + 7(i-1)]: webhook id, version ("<v> <origin>", with
-- " -" for a delete), '1' and the record read here or '0' and '' (none), the new record
-- ('' for a delete), its routing JSON, its queue
-- returns: {n, flags}: n writes gone through, flags[i] 1 when written, 0 when superseded. n is
-- less than the batch's size when write n + 1's record here changed since the caller read it
-- (the caller reads again and sends the rest; the cursor is left)
local function parse(version)
  if not version then return -1, '' end
  local v, origin = string.match(version, '^(%d+) (%S+)')
  return tonumber(v) or -1, origin or ''
end
local function beats(a, b)
  local av, ao = parse(a)
  local bv, bo = parse(b)
  return av > bv or (av == bv and ao > bo)
end
local flags = {}
local count = (#ARGV - 1) / 7
for i = 1, count do
  local at = 2 + 7 * (i - 1)
  local id, version, had, read = ARGV[at], ARGV[at + 1], ARGV[at + 2] == '1', ARGV[at + 3]
  local record, routing, queue = ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
  local old_tenant, new_tenant = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  -- version 0: a record from before regions (a resync), which only fills a gap
  local unversioned = string.sub(version, 1, 2) == '0 '
  if not beats(version, redis.call('HGET', KEYS[2], id))
    or (unversioned and redis.call('HEXISTS', KEYS[1], id) == 1) then
    flags[i] = 0
  else
    local raw = redis.call('HGET', KEYS[1], id)
    if (raw and not had) or (had and raw ~= read) then return {i - 1, flags} end
    if record == '' then
      if had then
        redis.call('HDEL', KEYS[1], id)
        redis.call('HDEL', old_tenant, id)
        if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('DECR', KEYS[4]) end
      end
    else
      redis.call('HSET', KEYS[1], id, record)
      if had and old_tenant ~= new_tenant then redis.call('HDEL', old_tenant, id) end
      redis.call('HSET', new_tenant, id, routing)
      redis.call('SADD', KEYS[3], queue)
      if not had then redis.call('INCR', KEYS[4]) end
    end
    redis.call('HSET', KEYS[2], id, version)
    flags[i] = 1
  end
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[5], ARGV[1]) end
return {count, flags}
