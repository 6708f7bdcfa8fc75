#!lua
-- replay.lua: put dead jobs back in the ready queue, attempts reset, history kept.
-- KEYS[1] dlq stream   KEYS[2] jobs hash   KEYS[3] ready stream of ARGV[1]
-- ARGV[1] queue name   ARGV[2..] job ids
-- returns: {replayed ids, ids skipped (unknown, not dead, or of another queue)}
local replayed, skipped = {}, {}
for i = 2, #ARGV do
  local job_id = ARGV[i]
  local record = redis.call('HGET', KEYS[2], job_id)
  local cut = record and string.find(record, '\n', 1, true)
  local meta = cut and cjson.decode(string.sub(record, 1, cut - 1))
  if meta and meta.s == 'dead' and meta.q == ARGV[1] then
    if meta.d then redis.call('XDEL', KEYS[1], meta.d) end
    meta.sid = redis.call('XADD', KEYS[3], '*', 'j', job_id, 'w', meta.w)
    meta.s = 'queued'; meta.a = 0; meta.k = 0
    meta.d = nil; meta.r = nil; meta.f = nil; meta.n = nil
    redis.call('HSET', KEYS[2], job_id, cjson.encode(meta) .. string.sub(record, cut))
    replayed[#replayed + 1] = job_id
  else
    skipped[#skipped + 1] = job_id
  end
end
return {replayed, skipped}
