-- outbox_read.lua: the relay holder of an outbox (keys.py ``outbox``) reads entries never read
-- before, only while its lease is still its own, in one step: a holder that lost its lease
-- (frozen past it) must take no entry its successor, whose pending pass is over, would not
-- see again (it would stay pending in the old holder's name while later ones pass it).
-- KEYS[1] the outbox stream   KEYS[2] its relay lease (``outbox_lease``)
-- ARGV[1] the consumer group   ARGV[2] the consumer   ARGV[3] the holder's token   ARGV[4] the
-- most entries to read
-- returns: {0} when the lease is not this token's; {1, entries} when there are new ones, each
--          {id, {field, value, ...}}; else {1, {}, id} with the id to wait after (XREAD BLOCK):
--          the last entry's ('0-0' when there is none), every entry up to it read already
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return {0} end
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[4],
                         'STREAMS', KEYS[1], '>')
if reply and #reply[1][2] > 0 then return {1, reply[1][2]} end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {1, {}, last[1] and last[1][1] or '0-0'}
