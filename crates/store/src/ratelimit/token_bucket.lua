-- Token bucket: a bucket of `capacity` tokens refilled continuously at `rate` per second.
--
-- KEYS[1]  hash {t = tokens after the last admission (a double), ts = when, in us}; no key
--          means a full bucket
-- ARGV     capacity, rate (tokens per second, > 0), cost
-- returns  "allowed (0|1) remaining reset_us retry_after_us" (see `decision` in the prelude)
--
--   tokens  = min(capacity, t + (now - ts) * rate / 1e6)
--   admit iff tokens >= cost; then tokens = tokens - cost (a refusal takes nothing)
--   remaining   = floor(tokens)
--   reset       = ceil((capacity - tokens) * 1e6 / rate)     until the bucket is full
--   retry_after = ceil((cost - tokens) * 1e6 / rate)         until `cost` tokens are there

local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = now_us()

local tokens = capacity
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
if state[1] and state[2] then
  local elapsed = now - tonumber(state[2])
  if elapsed < 0 then
    elapsed = 0 -- Redis's clock stepped back (a failover): refill nothing rather than go negative
  end
  tokens = math.min(capacity, tonumber(state[1]) + elapsed * rate / 1000000)
end

local allowed = 0
local retry = 0
if tokens >= cost then
  allowed = 1
  if cost > 0 then
    tokens = tokens - cost
    redis.call('HSET', KEYS[1], 't', double(tokens), 'ts', int(now))
    redis.call('PEXPIRE', KEYS[1], ttl_ms((capacity - tokens) * 1000000 / rate))
  end
else
  retry = ceil_us((cost - tokens) * 1000000 / rate)
end

local reset = ceil_us((capacity - tokens) * 1000000 / rate)
if allowed == 0 and cost > capacity then
  retry = reset -- can never pass: the best there is, a full bucket
end
return decision(allowed, math.floor(tokens), reset, retry)
