-- Sliding window counter: the sliding window estimated from two fixed windows (aligned as in
-- fixed_window.lua), the previous one weighted by the share of it still inside the sliding
-- window.
--
-- KEYS[1]  hash {w = start of the current window, in us; c = units admitted in it; p = units
--          admitted in the window before it}. Both windows in one hash: one key, rotated by
--          the script when the clock has moved on (a hash two windows old counts as empty).
-- ARGV     limit, window (us, >= 1), cost
-- returns  "allowed (0|1) remaining reset_us retry_after_us" (see `decision` in the prelude)
--
--   start     = now - now mod window,  elapsed = now - start
--   estimated = p * (window - elapsed) / window + c
--   admit iff estimated + cost <= limit; then c = c + cost
--   remaining = floor(limit - estimated), estimated taken after the decision
--   reset     = start + 2 * window - now if c > 0, start + window - now if only p > 0, else 0
--               (until the estimate is zero)
--   retry_after, when refused: the earliest moment the estimate leaves room for `cost`:
--     in this window if c + cost <= limit: elapsed' = window - (limit - c - cost) * window / p
--     else in the next one (p' = c, c' = 0): start + window - now
--                                           + max(0, window - (limit - cost) * window / c)

local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = now_us()

local start = now - math.fmod(now, window)
local elapsed = now - start

local prev = 0
local cur = 0
local state = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
if state[1] and state[2] and state[3] then
  local w = tonumber(state[1])
  if w == start then
    cur = tonumber(state[2])
    prev = tonumber(state[3])
  elseif w == start - window then
    prev = tonumber(state[2])
  end
end

local function estimate()
  return prev * (window - elapsed) / window + cur
end

local allowed = 0
local retry = 0
if estimate() + cost <= limit then
  allowed = 1
  if cost > 0 then
    cur = cur + cost
    redis.call('HSET', KEYS[1], 'w', int(start), 'c', int(cur), 'p', int(prev))
    redis.call('PEXPIRE', KEYS[1], ttl_ms(start + 2 * window - now))
  end
elseif cost <= limit then
  if cur + cost <= limit then
    -- prev > 0 here, or the request would have fitted
    local at = window - (limit - cur - cost) * window / prev
    retry = ceil_us(at - elapsed)
  else
    local at = 0
    if cur > 0 then
      at = math.max(0, window - (limit - cost) * window / cur)
    end
    retry = ceil_us(start + window - now + at)
  end
  if retry == 0 then
    retry = 1 -- the estimate is continuous: on the edge, one microsecond later it fits
  end
end

local reset = 0
if cur > 0 then
  reset = start + 2 * window - now
elseif prev > 0 then
  reset = start + window - now
end
if allowed == 0 and cost > limit then
  retry = reset -- can never pass: the best there is, an empty estimate
end
local remaining = math.floor(limit - estimate())
return decision(allowed, remaining, reset, retry)
