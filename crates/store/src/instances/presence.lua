-- Presence: one heartbeat of one instance, and the number of live instances, in one round trip.
--
-- KEYS[1]  sorted set: member = instance id, score = when it was last seen (us, Redis's clock)
-- ARGV     id, ttl (us)
-- returns  the number of instances seen within the last `ttl`, this one included
--
-- The set itself expires `ttl` after the last heartbeat of any instance.

local ttl = tonumber(ARGV[2])
local now = now_us()
redis.call('ZADD', KEYS[1], int(now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - ttl))
local live = redis.call('ZCARD', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ttl_ms(ttl))
return live
