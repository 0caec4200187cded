-- Fixed window: at most `limit` units in each window [k * window, (k + 1) * window) of Redis's
-- clock (aligned on the Unix epoch, so every instance and every key agree on the edges).
--
-- KEYS[1]  hash {w = start of the window counted, in us; n = units admitted in it}; a
--          hash of another window counts as empty
-- ARGV     limit, window (us, >= 1), cost
-- returns  "allowed (0|1) remaining reset_us retry_after_us" (see `decision` in the prelude)
--
--   start = now - now mod window
--   admit iff n + cost <= limit; then n = n + cost
--   remaining   = limit - n
--   reset       = start + window - now                    the end of the window
--   retry_after = start + window - now when refused        (a new window is empty)

local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = now_us()

local start = now - math.fmod(now, window) -- fmod is exact on doubles, `%` is not
local reset = start + window - now

local used = 0
local state = redis.call('HMGET', KEYS[1], 'w', 'n')
if state[1] and state[2] and tonumber(state[1]) == start then
  used = tonumber(state[2])
end

local allowed = 0
local retry = 0
if used + cost <= limit then
  allowed = 1
  if cost > 0 then
    used = used + cost
    redis.call('HSET', KEYS[1], 'w', int(start), 'n', int(used))
    redis.call('PEXPIRE', KEYS[1], ttl_ms(reset))
  end
else
  retry = reset
end

local remaining = limit - used
return decision(allowed, remaining, reset, retry)
