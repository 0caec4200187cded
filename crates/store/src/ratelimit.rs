//! Rate limits shared by every gateway instance, kept in Redis.
//!
//! [`RedisLimiter::decide`] answers for one request with the same [`Decision`] as the in-process
//! algorithms of `sekisho_policy::ratelimit`, and with the same semantics, but on state every
//! instance sees. Each decision is **one script call**: an `EVALSHA` of the algorithm's Lua script
//! (loading the scripts and sending the call again when Redis answers `NOSCRIPT`, e.g. after a
//! restart or a failover); the calls of one event-loop turn go to Redis as one pipeline, one
//! round trip for all of them (`ratelimit/batch.rs`). The script reads the state, decides, and writes it back atomically — Redis runs
//! a script with nothing else in between — so two instances can never both spend the last unit
//! (the over-admission of a read-then-write limiter), and it reads the time with
//! `redis.call('TIME')`, Redis's own clock, so instances whose clocks disagree still share one
//! notion of "now". (Redis ≥ 5 replicates scripts by their effects, which is what makes `TIME`
//! legal before a write.) See docs/decisions/0008-redis-rate-limit.md.
//!
//! # The scripts
//!
//! The exact formulas are written at the top of each script, `src/ratelimit/*.lua`; in short:
//!
//! | algorithm | key | state |
//! | --- | --- | --- |
//! | token bucket | `…:tb` | hash: tokens (a double), when |
//! | GCRA | `…:gcra` | string: the theoretical arrival time |
//! | fixed window | `…:fw` | hash: window start, units |
//! | sliding window log | `…:sl` | sorted set: one member per admitted unit, scored by time |
//! | sliding window counter | `…:sc` | hash: current window start, its units, the previous window's units |
//!
//! Time is integer microseconds of Redis's clock (about 1.8 × 10^15 today, exact in Lua's
//! doubles up to 2^53); windows are whole microseconds and aligned on the Unix epoch. Only the
//! token count (token bucket) and the theoretical arrival time (GCRA) are fractional, because the
//! rates are: they are stored with 17 significant digits, which round-trip a double exactly.
//! Durations come back rounded up to the microsecond, so retrying after `retry_after` succeeds
//! when nothing else was admitted meanwhile.
//!
//! A request whose cost exceeds the quota can never pass: it is refused with `retry_after` equal
//! to `reset` (configuration should not allow such a cost).
//!
//! # Keys
//!
//! The key of a limit is `{<prefix><key>}:<algorithm>`, e.g. `{sekisho:rl:orders:10.0.0.7}:tb`
//! for prefix `sekisho:rl:` and the caller's key `orders:10.0.0.7` (route, then client). The
//! braces are a Redis Cluster hash tag: only the part inside them chooses the slot, so every key
//! of one limit (and of one client on one route, whatever the algorithm) lives on one node and a
//! script may touch them together. Braces inside the prefix or key are escaped (`%7B`, `%7D`,
//! and `%` as `%25`) so a client-chosen key cannot end the tag early.
//!
//! Every write sets an expiry (`PEXPIRE`) at the moment the state would mean the same as no
//! state (a full bucket, an ended window, an empty log), so idle limits vanish. Expiry only
//! collects garbage: a state read after that moment decides the same as no state, so a key that
//! outlives its expiry (or is evicted) never changes a decision for the worse.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use sekisho_policy::ratelimit::{Decision, Limit};

use crate::StoreError;

mod batch;

/// The prefix of rate-limit keys unless the caller chooses another.
pub const DEFAULT_PREFIX: &str = "sekisho:rl:";

/// How long a decision may wait for Redis unless the caller chooses otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// Largest integer every Lua double holds exactly.
const MAX_EXACT: u64 = 1 << 53;

macro_rules! script {
    ($file:literal) => {
        concat!(include_str!("prelude.lua"), include_str!($file))
    };
}

/// The Lua source of each algorithm, with the shared prelude (for reading and for tests).
pub mod source {
    /// Token bucket.
    pub const TOKEN_BUCKET: &str = script!("ratelimit/token_bucket.lua");
    /// GCRA.
    pub const GCRA: &str = script!("ratelimit/gcra.lua");
    /// Fixed window.
    pub const FIXED_WINDOW: &str = script!("ratelimit/fixed_window.lua");
    /// Sliding window log.
    pub const SLIDING_LOG: &str = script!("ratelimit/sliding_log.lua");
    /// Sliding window counter.
    pub const SLIDING_COUNTER: &str = script!("ratelimit/sliding_counter.lua");
}

struct Scripts {
    token_bucket: Script,
    gcra: Script,
    fixed_window: Script,
    sliding_log: Script,
    sliding_counter: Script,
}

impl Scripts {
    /// Loads every script into Redis (after a `NOSCRIPT`: Redis restarted or failed over).
    async fn load(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        for script in [
            &self.token_bucket,
            &self.gcra,
            &self.fixed_window,
            &self.sliding_log,
            &self.sliding_counter,
        ] {
            script.prepare_invoke().load_async(conn).await?;
        }
        Ok(())
    }

    fn new() -> Self {
        Self {
            token_bucket: Script::new(source::TOKEN_BUCKET),
            gcra: Script::new(source::GCRA),
            fixed_window: Script::new(source::FIXED_WINDOW),
            sliding_log: Script::new(source::SLIDING_LOG),
            sliding_counter: Script::new(source::SLIDING_COUNTER),
        }
    }
}

/// Decides rate limits on Redis: one script per decision, the decisions of one event-loop turn
/// in one pipeline (`batch.rs`).
///
/// Cheap to clone (every clone and every concurrent call share one driver task and one
/// multiplexed TCP connection).
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    scripts: Arc<Scripts>,
    /// The batch driver, started on the runtime of the first decision.
    queue: Arc<std::sync::OnceLock<batch::Queue>>,
    counts: Arc<batch::Counts>,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter on `conn` whose keys start with `{<prefix>` (e.g. [`DEFAULT_PREFIX`]), each
    /// decision failing with [`StoreError::Timeout`] after `timeout` (e.g. [`DEFAULT_TIMEOUT`]).
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>, timeout: Duration) -> Self {
        Self {
            conn,
            prefix: Arc::from(prefix.into()),
            timeout,
            scripts: Arc::new(Scripts::new()),
            queue: Arc::new(std::sync::OnceLock::new()),
            counts: Arc::default(),
        }
    }

    /// Pipelines sent to Redis so far, and the decisions they carried (every clone counts into
    /// the same figures): decisions per pipeline is how well one event-loop turn's decisions
    /// were batched.
    pub fn pipelines(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.counts.batches.load(Relaxed),
            self.counts.calls.load(Relaxed),
        )
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The Redis key holding the state of `limit` for `key` (one key per limit; see the module
    /// docs for the format).
    pub fn redis_key(&self, limit: &Limit, key: &str) -> String {
        let suffix = match limit {
            Limit::TokenBucket { .. } => "tb",
            Limit::Gcra { .. } => "gcra",
            Limit::FixedWindow { .. } => "fw",
            Limit::SlidingWindowLog { .. } => "sl",
            Limit::SlidingWindowCounter { .. } => "sc",
        };
        let mut out = String::with_capacity(self.prefix.len() + key.len() + suffix.len() + 3);
        out.push('{');
        escape_into(&mut out, &self.prefix);
        escape_into(&mut out, key);
        out.push_str("}:");
        out.push_str(suffix);
        out
    }

    /// Decides whether a request of `cost` units under `limit` for `key` passes now, and takes
    /// the units if it does.
    ///
    /// One round trip to Redis, bounded by the limiter's timeout. An error is never a decision:
    /// on [`StoreError::Timeout`] the script may have run (and taken the units) all the same.
    pub async fn decide(
        &self,
        limit: &Limit,
        key: &str,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        let quota = limit.quota();
        exact(quota, "quota of 2^53 or more")?;
        exact(cost, "cost of 2^53 or more")?;
        let redis_key = self.redis_key(limit, key);
        // Sized for the whole command: no reallocation while the arguments are written.
        let mut command = redis::Cmd::with_capacity(6, 96 + redis_key.len());
        command.arg("EVALSHA");
        // Each script's two parameters: the quota, then a rate (per second) or a window (µs).
        enum Second {
            Rate(f64),
            Window(u64),
        }
        let scripts = &self.scripts;
        let (script, quota_arg, second) = match *limit {
            Limit::TokenBucket {
                capacity,
                refill_per_second,
            } => (
                &scripts.token_bucket,
                capacity,
                Second::Rate(rate(refill_per_second)?),
            ),
            Limit::Gcra { burst, per_second } => {
                (&scripts.gcra, burst, Second::Rate(rate(per_second)?))
            }
            Limit::FixedWindow { limit, window } => (
                &scripts.fixed_window,
                limit,
                Second::Window(window_us(window)?),
            ),
            Limit::SlidingWindowLog { limit, window } => (
                &scripts.sliding_log,
                limit,
                Second::Window(window_us(window)?),
            ),
            Limit::SlidingWindowCounter { limit, window } => (
                &scripts.sliding_counter,
                limit,
                Second::Window(window_us(window)?),
            ),
        };
        command
            .arg(script.get_hash())
            .arg(1)
            .arg(redis_key)
            .arg(quota_arg);
        match second {
            Second::Rate(per_second) => command.arg(per_second),
            Second::Window(us) => command.arg(us),
        };
        command.arg(cost);
        let queue = self.queue.get_or_init(|| {
            batch::start(
                self.conn.clone(),
                self.scripts.clone(),
                self.timeout,
                self.counts.clone(),
            )
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || {
            StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "the rate-limit batch driver has stopped",
            )))
        };
        queue
            .send(batch::Job { command, reply })
            .map_err(|_| gone())?;
        let value = answer.await.map_err(|_| gone())??;
        let [allowed, remaining, reset, retry_after] = decision_of(&value)?;
        Ok(Decision {
            allowed: allowed == 1,
            limit: quota,
            remaining: clamp(remaining),
            reset: Duration::from_micros(clamp(reset)),
            retry_after: Duration::from_micros(clamp(retry_after)),
        })
    }
}

/// The four integers of a script's answer (`"allowed remaining reset_us retry_after_us"`).
fn decision_of(value: &redis::Value) -> Result<[i64; 4], StoreError> {
    let text: &[u8] = match value {
        redis::Value::BulkString(bytes) => bytes,
        redis::Value::SimpleString(text) => text.as_bytes(),
        _ => &[],
    };
    let mut out = [0_i64; 4];
    let mut fields = text.split(|b| *b == b' ');
    for slot in &mut out {
        *slot = fields
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| {
                StoreError::Redis(redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "a rate-limit script answered something else than four integers",
                    format!("{value:?}"),
                )))
            })?;
    }
    Ok(out)
}

/// A rate as the script reads it (a positive, finite double; redis-rs writes it as the shortest
/// decimal that parses back to the same double).
fn rate(per_second: f64) -> Result<f64, StoreError> {
    if per_second.is_finite() && per_second > 0.0 {
        Ok(per_second)
    } else {
        Err(StoreError::InvalidLimit(
            "rate must be a positive, finite number per second",
        ))
    }
}

/// A window in whole microseconds (sub-microsecond parts dropped), at least one.
fn window_us(window: Duration) -> Result<u64, StoreError> {
    let us = window.as_micros();
    if us == 0 {
        return Err(StoreError::InvalidLimit(
            "window shorter than a microsecond",
        ));
    }
    match u64::try_from(us) {
        Ok(us) if us < MAX_EXACT / 4 => Ok(us),
        _ => Err(StoreError::InvalidLimit(
            "window longer than 2^51 microseconds",
        )),
    }
}

fn exact(n: u64, what: &'static str) -> Result<(), StoreError> {
    if n < MAX_EXACT {
        Ok(())
    } else {
        Err(StoreError::InvalidLimit(what))
    }
}

fn clamp(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Appends `s` with `%`, `{` and `}` percent-escaped, so it cannot open or close a hash tag.
fn escape_into(out: &mut String, s: &str) {
    if !s.contains(['%', '{', '}']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_s_answer_is_four_integers() {
        let answer = redis::Value::BulkString(b"1 41 1000000 0".to_vec());
        assert_eq!(decision_of(&answer).ok(), Some([1, 41, 1_000_000, 0]));
        for wrong in [
            redis::Value::BulkString(b"1 41 1000000".to_vec()),
            redis::Value::BulkString(b"1 x 2 3".to_vec()),
            redis::Value::Int(1),
        ] {
            assert!(decision_of(&wrong).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn escapes_braces_and_percent() {
        let mut out = String::new();
        escape_into(&mut out, "a{b}c%d");
        assert_eq!(out, "a%7Bb%7Dc%25d");
        let mut plain = String::new();
        escape_into(&mut plain, "orders:10.0.0.7");
        assert_eq!(plain, "orders:10.0.0.7");
    }

    #[test]
    fn rejects_limits_lua_cannot_hold() {
        assert!(rate(0.0).is_err());
        assert!(rate(f64::NAN).is_err());
        assert!(rate(f64::INFINITY).is_err());
        assert_eq!(rate(0.5).ok(), Some(0.5));
        // What the script reads: redis-rs writes a double as its shortest round-trip decimal
        // (ryu), which Lua's tonumber reads back to the same double.
        for per_second in [0.5, 1e-9, 1e9, 1.0 / 3.0, 123_456.789] {
            let mut command = redis::Cmd::new();
            command.arg(per_second);
            let written = command.args_iter().next().map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                redis::Arg::Cursor => String::new(),
            });
            let written = written.unwrap_or_default();
            assert_eq!(written.parse::<f64>().ok(), Some(per_second), "{written}");
        }
        assert!(window_us(Duration::from_nanos(999)).is_err());
        assert_eq!(window_us(Duration::from_millis(200)).ok(), Some(200_000));
        assert!(exact(1 << 53, "x").is_err());
        assert!(exact((1 << 53) - 1, "x").is_ok());
    }

    #[test]
    fn scripts_start_with_the_prelude() {
        for src in [
            source::TOKEN_BUCKET,
            source::GCRA,
            source::FIXED_WINDOW,
            source::SLIDING_LOG,
            source::SLIDING_COUNTER,
        ] {
            assert!(src.starts_with("-- sekisho-store: the helpers"));
            assert!(src.contains("redis.call('TIME')"));
        }
    }
}
