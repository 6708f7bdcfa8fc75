#!lua
-- index_queues.lua: one page of the backfill that adds the queues of a shard's webhooks to its
-- set of queue names, for webhooks an older release wrote without adding their queue. Only
-- the holder of the backfill lock reads a page; the cursor is kept in Redis, so the next
-- request (of any process) goes on where this one stopped.
-- KEYS[1] webhooks hash   KEYS[2] the set of queue names webhooks name
-- KEYS[3] the "indexed" marker (set to HLEN of KEYS[1] when the scan ends)
-- KEYS[4] the cursor of the scan under way   KEYS[5] the backfill lock
-- ARGV[1] the caller's lock token   ARGV[2] HSCAN COUNT
-- ARGV[3] the marker's TTL (ms)   ARGV[4] the cursor's TTL (ms)
-- ARGV[5] '1' to release the lock after this page (the caller's last page)
-- returns: {state, webhooks read so far in this scan, webhooks in the hash}; state 'done'
-- (scan ended, marker set, lock released), 'more' (call again), 'lost' (lock not ours,
-- nothing read)
if redis.call('GET', KEYS[5]) ~= ARGV[1] then
  return {'lost', 0, redis.call('HLEN', KEYS[1])}
end
local cursor, read = '0', 0
local saved = redis.call('GET', KEYS[4])
if saved then
  local sep = string.find(saved, ' ', 1, true)
  cursor, read = string.sub(saved, 1, sep - 1), tonumber(string.sub(saved, sep + 1))
end
local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', ARGV[2])
local fields = page[2]
for i = 2, #fields, 2 do
  local ok, hook = pcall(cjson.decode, fields[i])
  if ok and type(hook) == 'table' then
    local queue = hook.queue
    if type(queue) ~= 'string' then queue = 'default' end
    redis.call('SADD', KEYS[2], queue)
  end
end
read = read + #fields / 2
local total = redis.call('HLEN', KEYS[1])
if page[1] == '0' then
  redis.call('SET', KEYS[3], total, 'PX', ARGV[3])
  redis.call('DEL', KEYS[4], KEYS[5])
  return {'done', read, total}
end
redis.call('SET', KEYS[4], page[1] .. ' ' .. read, 'PX', ARGV[4])
if ARGV[5] == '1' then redis.call('DEL', KEYS[5]) end
return {'more', read, total}
