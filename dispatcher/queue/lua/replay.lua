#!lua
-- replay.lua: put dead jobs back in their ready queues (attempts reset, history kept), or say
-- why a dead job cannot go back: it is never put back only to die again or loop.
-- KEYS[1] dlq stream   KEYS[2] jobs hash   KEYS[3] webhooks hash   KEYS[4..] ready streams
-- ARGV[1] mode   ARGV[2] the stream names of KEYS[4..], space-separated
--   'ids' or 'check': ARGV[3..] job ids; all or nothing: when one of them cannot go back,
--     none does. 'check' only answers, writing nothing.
--   'range': ARGV[3] start, ARGV[4] end (XRANGE syntax), ARGV[5] most DLQ entries to read,
--     ARGV[6] webhook id, ARGV[7] tenant id, ARGV[8] the DLQ entry's reason ('' matches any):
--     replay the matching dead jobs of that DLQ page and skip those that cannot go back.
-- returns: {status, {replayed job id, ...}, {job id, reason, ...} refused or skipped,
--           last entry read ('' none), entries read, {job id, why, ...} passed over ('ids')}
--   status 1: done. 0: refused, nothing written ('ids', 'check'). -1: a job's stream is not
--   among KEYS, nothing written; the refused list is {stream}: call again with its key.
-- A task job (webhook id 'task', queue/tasks.py) has no webhook to check.
-- Reasons: 'payload_lost' (dead as entry_missing: the payload went with its stream entry),
-- 'webhook_deleted', 'webhook_disabled' (it would die again at once, unsent),
-- 'malformed' (no job, or a record that cannot be read), 'record_missing' (range only).
-- Unknown ids and jobs that are not dead are passed over (a replay can be repeated); in 'ids'
-- mode the last list names each with why: 'not_found' (no record) or 'not_dead'.
-- A dead job of a FIFO lane ('ol', _lane.lua) goes to the back of its lane: into its stream
-- only when the lane is empty, else it waits (state queued, 'wr' ordering) for the jobs ahead.
-- Records are read as _record.lua says (the format: dispatcher/queue/codec.py).
-- include: _record.lua
-- include: _lane.lua
local mode = ARGV[1]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ready = {}
local n = 0
for name in string.gmatch(ARGV[2], '%S+') do n = n + 1; ready[name] = KEYS[3 + n] end

local hooks = {}
local function hook_state(webhook_id)
  if hooks[webhook_id] == nil then
    local raw = redis.call('HGET', KEYS[3], webhook_id)
    if not raw then
      hooks[webhook_id] = 'webhook_deleted'
    else
      local ok, hook = pcall(cjson.decode, raw)
      hooks[webhook_id] = (ok and type(hook) == 'table' and hook.enabled == false)
                          and 'webhook_disabled' or 'ok'
    end
  end
  return hooks[webhook_id]
end

-- A job's verdict: 'not_found' or 'not_dead' (pass over), 'ok' with its meta, or a reason.
local function judge(job_id)
  local record = redis.call('HGET', KEYS[2], job_id)
  if not record then return 'not_found' end
  if is_locator(record) then return 'not_dead' end  -- queued: its data is in its entry
  local meta, rest = split_record(record)
  if not meta then return 'malformed' end
  if meta.s ~= 'dead' then return 'not_dead' end
  if type(meta.q) ~= 'string' then return 'malformed' end
  if meta.w == nil or meta.w == '' or rest == '\n' then return 'payload_lost', meta end
  if meta.w == 'task' then return 'ok', meta, rest end  -- a task job: no webhook to check
  local state = hook_state(meta.w)
  if state ~= 'ok' then return state, meta end
  return 'ok', meta, rest
end

local chosen, refused, seen, passed = {}, {}, {}, {}
local function choose(job_id, meta, rest)
  if not seen[job_id] then
    seen[job_id] = true
    chosen[#chosen + 1] = {job_id, meta, rest}
  end
end
local last, read = '', 0
if mode == 'range' then
  local page = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
  local want_hook, want_tenant, want_reason = ARGV[6], ARGV[7], ARGV[8] or ''
  local filtered = want_hook ~= '' or want_tenant ~= '' or want_reason ~= ''
  read = #page
  for _, entry in ipairs(page) do
    last = entry[1]
    local f = {}
    for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
    if want_reason ~= '' and f.r ~= want_reason then
      -- dead for another reason: not asked for, passed over
    elseif not f.j then
      if not filtered then refused[#refused + 1] = ''; refused[#refused + 1] = 'malformed' end
    else
      local verdict, meta, rest = judge(f.j)
      local matches = meta ~= nil and (want_hook == '' or meta.w == want_hook)
                      and (want_tenant == '' or meta.t == want_tenant)
                      -- a task has no webhook nor tenant: a filter by either never matches one
                      and ((want_hook == '' and want_tenant == '') or meta.w ~= 'task')
      if verdict == 'not_found' or verdict == 'not_dead' then
        if not filtered and verdict == 'not_found' then
          refused[#refused + 1] = f.j; refused[#refused + 1] = 'record_missing'
        end
      elseif verdict == 'malformed' then
        if not filtered then refused[#refused + 1] = f.j; refused[#refused + 1] = verdict end
      elseif matches then
        if verdict == 'ok' then
          choose(f.j, meta, rest)
        else
          refused[#refused + 1] = f.j; refused[#refused + 1] = verdict
        end
      end
    end
  end
else
  for i = 3, #ARGV do
    local verdict, meta, rest = judge(ARGV[i])
    if verdict == 'ok' then
      choose(ARGV[i], meta, rest)
    elseif verdict == 'not_found' or verdict == 'not_dead' then
      passed[#passed + 1] = ARGV[i]; passed[#passed + 1] = verdict
    else
      refused[#refused + 1] = ARGV[i]; refused[#refused + 1] = verdict
    end
  end
  if #refused > 0 or mode == 'check' then
    return {#refused > 0 and 0 or 1, {}, refused, '', 0, {}}
  end
end

for _, job in ipairs(chosen) do
  if not ready[job[2].q] then return {-1, {}, {job[2].q}, '', 0, {}} end
end

local replayed = {}
for _, job in ipairs(chosen) do
  local job_id, meta, rest = job[1], job[2], job[3]
  if meta.d then redis.call('XDEL', KEYS[1], meta.d) end
  meta.sid = nil; meta.wr = nil
  local base = KEYS[2]:sub(1, -5)
  if type(meta.ol) ~= 'string' or join_lane(base, meta.ol, job_id, meta, now_ms) then
    meta.sid = redis.call('XADD', ready[meta.q], '*', 'j', job_id, 'w', meta.w)
  end
  meta.s = 'queued'; meta.a = 0; meta.k = 0
  meta.d = nil; meta.r = nil; meta.f = nil; meta.n = nil
  redis.call('HSET', KEYS[2], job_id, cjson.encode(meta) .. rest)
  replayed[#replayed + 1] = job_id
end
return {1, replayed, refused, last, read, passed}
