#!lua flags=no-writes
-- dlq_count.lua: count one bounded run of dead-letter entries, reading no job record.
-- KEYS[1] dlq stream
-- ARGV[1] start   ARGV[2] end (XRANGE syntax)   ARGV[3] most entries to count
-- returns: {entries counted, last entry counted ('' none)}
local page = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
if #page == 0 then return {0, ''} end
return {#page, page[#page][1]}
