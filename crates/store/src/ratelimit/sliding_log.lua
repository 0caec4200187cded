-- Sliding window log: at most `limit` units in any window (now - window, now], exactly. One
-- member per admitted unit in a sorted set scored by the microsecond it was admitted.
--
-- KEYS[1]  sorted set; member "<us>:<i>" for unit i of the request admitted at <us>
-- ARGV     limit, window (us, >= 1), cost
-- returns  "allowed (0|1) remaining reset_us retry_after_us" (see `decision` in the prelude)
--
--   trim members scored <= now - window (they left the window)
--   used = ZCARD
--   admit iff used + cost <= limit; then add `cost` members scored at = max(now, newest + 1)
--     (strictly increasing per key, so members are unique even within one microsecond or if
--     Redis's clock steps back: an entry may be placed a few us late, never early)
--   remaining   = limit - used
--   reset       = newest + window - now                  until the log is empty
--   retry_after = s + window - now when refused, where s is the score of the
--                 (used + cost - limit)-th oldest member: once it leaves, the request fits

local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = now_us()

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - window))
local used = redis.call('ZCARD', KEYS[1])

local function newest()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then
    return tonumber(last[2])
  end
  return nil
end

local allowed = 0
local retry = 0
local last_at = nil -- the newest score, once known
if used + cost <= limit then
  allowed = 1
  if cost > 0 then
    local at = now
    local last = newest()
    if last and last >= at then
      at = last + 1
    end
    local score = int(at)
    local i = 1
    while i <= cost do
      local args = {}
      local upto = math.min(cost, i + 999) -- at most 1000 members per ZADD (Lua's stack)
      for j = i, upto do
        args[#args + 1] = score
        args[#args + 1] = score .. ':' .. j
      end
      redis.call('ZADD', KEYS[1], unpack(args))
      i = upto + 1
    end
    used = used + cost
    last_at = at
    redis.call('PEXPIRE', KEYS[1], ttl_ms(at + window - now))
  end
elseif cost <= limit then
  local nth = used + cost - limit - 1
  local member = redis.call('ZRANGE', KEYS[1], nth, nth, 'WITHSCORES')
  retry = ceil_us(tonumber(member[2]) + window - now)
end

local reset = 0
if used > 0 then
  reset = ceil_us((last_at or newest()) + window - now)
end
if allowed == 0 and cost > limit then
  retry = reset -- can never pass: the best there is, an empty log
end
local remaining = limit - used
return decision(allowed, remaining, reset, retry)
