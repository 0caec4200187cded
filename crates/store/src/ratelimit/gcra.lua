-- GCRA (generic cell rate algorithm): the token bucket's admission kept as one timestamp, the
-- theoretical arrival time (TAT) at which the bucket would be full again.
--
-- KEYS[1]  string: TAT in us (a double); no key (or a TAT in the past) means a full bucket
-- ARGV     burst, rate (per second, > 0), cost
-- returns  "allowed (0|1) remaining reset_us retry_after_us" (see `decision` in the prelude)
--
--   T       = 1e6 / rate                 emission interval, us per unit
--   tau     = burst * T                  how far TAT may run ahead of now
--   tat     = max(TAT, now)
--   admit iff tat + cost * T - now <= tau      (i.e. tat - now <= (burst - cost) * T;
--                                               for cost 1 the classic tolerance (burst - 1) * T)
--   then TAT = tat + cost * T (a refusal leaves TAT alone)
--   remaining   = floor((tau - (TAT - now)) / T)      the tokens a bucket would hold
--   reset       = ceil(TAT - now)                     until the bucket is full
--   retry_after = ceil(tat + cost * T - now - tau)    until the request would fit
--
-- With tokens = burst - (tat - now) / T this is the token bucket of capacity = burst and
-- refill = rate, decision for decision.

local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = now_us()

local interval = 1000000 / rate
local tau = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end

local after = tat + cost * interval
local allowed = 0
local retry = 0
if after - now <= tau then
  allowed = 1
  if cost > 0 then
    tat = after
    redis.call('SET', KEYS[1], double(tat), 'PX', ttl_ms(tat - now))
  end
else
  retry = ceil_us(after - now - tau)
end

local remaining = math.floor((tau - (tat - now)) / interval)
local reset = ceil_us(tat - now)
if allowed == 0 and cost > burst then
  retry = reset -- can never pass: the best there is, a full bucket
end
return decision(allowed, remaining, reset, retry)
