#!lua
-- breaker_probe.lua: may this job be the probe of a half-open breaker?
-- KEYS[1] breakers hash   ARGV[1] webhook id   ARGV[2] job id
-- returns: 1 when the job is (now) the probe, else 0. The first job to ask while no probe is
-- chosen becomes it, so exactly one attempt tests a recovering endpoint.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 1 end  -- the breaker is gone: closed
local b = cjson.decode(raw)
if b.s == 'closed' then return 1 end
if b.s ~= 'half_open' then return 0 end
if b.pj == ARGV[2] then return 1 end
if b.pj ~= '' then return 0 end
local t = redis.call('TIME')
b.pj, b.pa = ARGV[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(b))
return 1
