-- sekisho-store: the helpers every script starts with (prepended at compile time).
--
-- Time is Redis's own clock (TIME), in integer microseconds since the Unix epoch: about 1.8e15
-- today, well below 2^53, so Lua's doubles hold it exactly. Durations handed back are clamped
-- to [0, 2^52] microseconds (about 142 years).

local MAX_US = 4503599627370496

-- Redis's clock, in microseconds.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- A duration in whole microseconds, rounded up and clamped.
local function ceil_us(us)
  if us ~= us or us > MAX_US then
    return MAX_US
  end
  if us <= 0 then
    return 0
  end
  return math.ceil(us)
end

-- An integer as a Redis argument. Lua would write 1e17 as "1e+17", which Redis refuses as an
-- integer: format it ourselves.
local function int(n)
  return string.format('%d', n)
end

-- A double as a Redis value, exact on the way back (tonumber of 17 significant digits).
local function double(x)
  return string.format('%.17g', x)
end

-- A time-to-live in milliseconds that outlasts `us` microseconds: keys only collect garbage,
-- a state read after its deadline means the same as no state at all.
local function ttl_ms(us)
  return int(math.floor(ceil_us(us) / 1000) + 1)
end

-- What every script answers: "allowed remaining reset_us retry_after_us", four integers in one
-- string (allowed 0|1, remaining never below 0). One bulk string rather than an array of four
-- integers: the gateway reads it back with a split, where a reply of five RESP values cost its
-- client's parser about 5,000 instructions (docs/benchmarks.md, session 7).
local function decision(allowed, remaining, reset, retry)
  if remaining < 0 then
    remaining = 0
  end
  return string.format('%d %d %d %d', allowed, remaining, reset, retry)
end
