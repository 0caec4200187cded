//! Rate limiting: five algorithms behind one shape of decision.
//!
//! Every algorithm answers the same question — may a request of `cost` units pass now, and if
//! not, when? — as a [`Decision`]. Time is passed in as nanoseconds of a monotonic clock the
//! caller owns, so the algorithms can be tested with a clock the test moves, and the Redis
//! backend (in `sekisho-store`) can run the same rules on Redis's own clock.
//!
//! The parameters of a limit are a [`Limit`]; which state each algorithm keeps, and its exact
//! reference semantics, are written down in the algorithm's module.

use std::time::Duration;

/// The parameters of one limit, per algorithm (CONTRACT.md `[routes.rate_limit]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// A bucket of `capacity` tokens refilled continuously at `refill_per_second`.
    TokenBucket {
        /// Tokens the bucket holds at most: the burst.
        capacity: u64,
        /// Tokens added per second: the sustained rate.
        refill_per_second: f64,
    },
    /// Generic cell rate algorithm: the same admission as a token bucket, kept as one timestamp
    /// (the theoretical arrival time).
    Gcra {
        /// Requests admitted back to back at most: the burst.
        burst: u64,
        /// Requests per second sustained.
        per_second: f64,
    },
    /// At most `limit` units in each aligned window of length `window`.
    FixedWindow {
        /// Units per window.
        limit: u64,
        /// Window length.
        window: Duration,
    },
    /// At most `limit` units in any window of length `window` ending now (exact; one entry per
    /// admitted request kept).
    SlidingWindowLog {
        /// Units per window.
        limit: u64,
        /// Window length.
        window: Duration,
    },
    /// Approximates the sliding window from two fixed windows: the previous window's count
    /// weighted by the share of it still inside the sliding window, plus the current count.
    SlidingWindowCounter {
        /// Units per window.
        limit: u64,
        /// Window length.
        window: Duration,
    },
}

impl Limit {
    /// The quota a client is told about (`RateLimit-Limit`).
    pub fn quota(&self) -> u64 {
        match *self {
            Limit::TokenBucket { capacity, .. } => capacity,
            Limit::Gcra { burst, .. } => burst,
            Limit::FixedWindow { limit, .. }
            | Limit::SlidingWindowLog { limit, .. }
            | Limit::SlidingWindowCounter { limit, .. } => limit,
        }
    }
}

/// The answer of a limiter for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request passes; when it does, its cost has been taken.
    pub allowed: bool,
    /// The quota (`RateLimit-Limit`).
    pub limit: u64,
    /// Units left after this decision (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Time until the quota is whole again (`RateLimit-Reset`, rounded up to seconds by the
    /// caller).
    pub reset: Duration,
    /// When refused: time until a request of the same cost would pass (`Retry-After`). Zero when
    /// allowed.
    pub retry_after: Duration,
}

impl Decision {
    /// A decision from figures in nanoseconds.
    pub fn new(allowed: bool, limit: u64, remaining: u64, reset_ns: u64, retry_ns: u64) -> Self {
        Self {
            allowed,
            limit,
            remaining,
            reset: Duration::from_nanos(reset_ns),
            retry_after: Duration::from_nanos(retry_ns),
        }
    }
}

pub mod fixed_window;
pub mod gcra;
pub mod local;
pub mod sliding_counter;
pub mod sliding_log;
pub mod token_bucket;

pub use fixed_window::FixedWindow;
pub use gcra::Gcra;
pub use local::LocalLimiter;
pub use sliding_counter::SlidingWindowCounter;
pub use sliding_log::SlidingWindowLog;
pub use token_bucket::TokenBucket;

/// What every algorithm is: rules that decide one request against one key's state.
///
/// The state lives with the caller (in [`LocalLimiter`], a map of keys to states), so one
/// algorithm value serves every key. `now` is nanoseconds of the caller's monotonic clock; it may
/// start anywhere, but must not run backwards for one key (the algorithms tolerate it without
/// panicking, deciding as if no time had passed).
pub trait Algorithm {
    /// One key's state.
    type State: Clone;

    /// The state of a key never seen before, at `now`: a full quota.
    fn fresh(&self, now: u64) -> Self::State;

    /// Decides a request of `cost` units at `now`, taking the cost from `state` when allowed.
    fn decide(&self, state: &mut Self::State, now: u64, cost: u64) -> Decision;

    /// Whether `state` decides at `now` exactly as a fresh one would, so it can be forgotten.
    fn is_idle(&self, state: &Self::State, now: u64) -> bool;

    /// The quota clients are told about (`RateLimit-Limit`).
    fn quota(&self) -> u64;
}

const NANOS_PER_SECOND: f64 = 1e9;

/// Nanoseconds from a non-negative float, rounded up (so waiting that long is enough).
fn nanos(ns: f64) -> u64 {
    if ns.is_nan() || ns <= 0.0 {
        0
    } else {
        ns.ceil().min(u64::MAX as f64) as u64
    }
}

/// A window in nanoseconds, at least 1.
fn window_nanos(window: Duration) -> u64 {
    u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// A key's state and a clock the test moves, for the algorithms' unit tests.
#[cfg(test)]
mod testing {
    use super::{Algorithm, Decision};
    use std::time::Duration;

    pub struct Clock<'a, A: Algorithm> {
        algorithm: &'a A,
        state: A::State,
        now: u64,
    }

    impl<'a, A: Algorithm> Clock<'a, A> {
        pub fn new(algorithm: &'a A) -> Self {
            Self {
                state: algorithm.fresh(0),
                algorithm,
                now: 0,
            }
        }

        pub fn advance(&mut self, by: Duration) {
            self.now += u64::try_from(by.as_nanos()).expect("test durations fit");
        }

        pub fn decide(&mut self, cost: u64) -> Decision {
            self.algorithm.decide(&mut self.state, self.now, cost)
        }
    }
}
