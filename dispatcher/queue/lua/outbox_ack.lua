-- outbox_ack.lua: the relay holder of an outbox (keys.py ``outbox``) acks and deletes the
-- entries its destination now has, and renews its lease, in one step.
-- KEYS[1] the outbox stream   KEYS[2] its relay lease (``outbox_lease``)
-- ARGV[1] the consumer group   ARGV[2] the holder's token   ARGV[3] the lease's new time to
-- live in ms (0: let it go)   ARGV[4...] the entry ids to ack and delete (none: renew only)
-- The entries are acked whoever holds the lease (their jobs are in the destination either way);
-- the lease is renewed only when it is still this token's.
-- returns: 1 when the lease is (still) this holder's, else 0
if #ARGV > 3 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 4))
  redis.call('XDEL', KEYS[1], unpack(ARGV, 4))
end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[2])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1
