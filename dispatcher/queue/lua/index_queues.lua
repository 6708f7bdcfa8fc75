#!lua
-- index_queues.lua: add the queues of one page of a shard's webhooks to its set of queue
-- names, for webhooks written before that set existed (a one-time backfill, page by page).
-- KEYS[1] webhooks hash   KEYS[2] the set of queue names webhooks name
-- KEYS[3] the "indexed" marker, set when the scan is done
-- ARGV[1] HSCAN cursor ('0' to start)   ARGV[2] HSCAN COUNT
-- returns: the next cursor ('0' when the whole hash was read and the marker set)
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = page[2]
for i = 2, #fields, 2 do
  local ok, hook = pcall(cjson.decode, fields[i])
  if ok and type(hook) == 'table' then
    local queue = hook.queue
    if type(queue) ~= 'string' then queue = 'default' end
    redis.call('SADD', KEYS[2], queue)
  end
end
if page[1] == '0' then redis.call('SET', KEYS[3], '1') end
return page[1]
