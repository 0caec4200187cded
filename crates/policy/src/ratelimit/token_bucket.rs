//! Token bucket: a bucket of `capacity` tokens refilled continuously at `refill_per_second`.
//!
//! # Reference semantics
//!
//! State: `tokens` (fractional) and `at`, the instant they were counted. A key never seen holds a
//! full bucket. For a request of `cost` at `now`:
//!
//! ```text
//! tokens      = min(capacity, tokens + (now - at) × rate)
//! admit iff tokens ≥ cost; then tokens = tokens − cost       (a refusal takes nothing)
//! remaining   = ⌊tokens⌋
//! reset       = ⌈(capacity − tokens) / rate⌉                until the bucket is full
//! retry_after = ⌈(cost − tokens) / rate⌉ when refused       until `cost` tokens are there
//! ```
//!
//! A burst of `capacity` passes at once; then one request per `1 / rate`. A cost above the
//! capacity can never pass: it is refused with `retry_after = reset`. The same formulas run in
//! Redis (`sekisho-store`, `token_bucket.lua`) on Redis's clock.

use super::{nanos, Algorithm, Decision, NANOS_PER_SECOND};

/// The token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    quota: u64,
    /// Tokens per second.
    rate: f64,
    /// Nanoseconds per token (`1e9 / rate`): waits are products, not divisions.
    ns_per_token: f64,
}

/// One key's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: u64,
}

impl TokenBucket {
    /// A bucket of `capacity` tokens refilled at `refill_per_second` (> 0).
    pub fn new(capacity: u64, refill_per_second: f64) -> Self {
        Self {
            capacity: capacity as f64,
            quota: capacity,
            rate: refill_per_second.max(f64::MIN_POSITIVE),
            ns_per_token: NANOS_PER_SECOND / refill_per_second.max(f64::MIN_POSITIVE),
        }
    }

    fn tokens(&self, bucket: &Bucket, now: u64) -> f64 {
        let elapsed = now.saturating_sub(bucket.at) as f64;
        (bucket.tokens + elapsed * self.rate / NANOS_PER_SECOND).min(self.capacity)
    }
}

impl Algorithm for TokenBucket {
    type State = Bucket;

    fn fresh(&self, now: u64) -> Bucket {
        Bucket {
            tokens: self.capacity,
            at: now,
        }
    }

    fn decide(&self, bucket: &mut Bucket, now: u64, cost: u64) -> Decision {
        let mut tokens = self.tokens(bucket, now);
        let cost_f = cost as f64;
        let allowed = tokens >= cost_f;
        let mut retry = 0;
        if allowed {
            tokens -= cost_f;
            *bucket = Bucket {
                tokens,
                at: now.max(bucket.at),
            };
        } else {
            retry = nanos((cost_f - tokens) * self.ns_per_token);
        }
        let reset = nanos((self.capacity - tokens) * self.ns_per_token);
        if !allowed && cost > self.quota {
            retry = reset;
        }
        Decision::new(allowed, self.quota, tokens.floor() as u64, reset, retry)
    }

    fn is_idle(&self, bucket: &Bucket, now: u64) -> bool {
        self.tokens(bucket, now) >= self.capacity
    }

    fn quota(&self) -> u64 {
        self.quota
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::testing::Clock;
    use std::time::Duration;

    #[test]
    fn a_burst_of_capacity_then_one_per_interval() {
        let limit = TokenBucket::new(3, 2.0); // 3 at once, then one per 500 ms
        let mut clock = Clock::new(&limit);
        for left in [2, 1, 0] {
            let d = clock.decide(1);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let refused = clock.decide(1);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.reset, Duration::from_millis(1500));

        clock.advance(Duration::from_millis(499));
        assert!(
            !clock.decide(1).allowed,
            "a refusal takes nothing, and 499 ms is not enough"
        );
        clock.advance(Duration::from_millis(1));
        assert!(clock.decide(1).allowed);
        assert!(!clock.decide(1).allowed);
    }

    #[test]
    fn refill_stops_at_capacity() {
        let limit = TokenBucket::new(2, 10.0);
        let mut clock = Clock::new(&limit);
        assert!(clock.decide(2).allowed);
        clock.advance(Duration::from_secs(3600));
        assert!(clock.decide(2).allowed);
        assert!(
            !clock.decide(1).allowed,
            "an hour idle fills the bucket to 2, not 36000"
        );
    }

    #[test]
    fn fractional_refill_accumulates() {
        let limit = TokenBucket::new(1, 0.5); // one token every 2 s
        let mut clock = Clock::new(&limit);
        assert!(clock.decide(1).allowed);
        for _ in 0..3 {
            clock.advance(Duration::from_millis(500));
            assert!(!clock.decide(1).allowed);
        }
        clock.advance(Duration::from_millis(500));
        assert!(clock.decide(1).allowed);
    }

    #[test]
    fn cost_larger_than_capacity_never_passes() {
        let limit = TokenBucket::new(5, 1.0);
        let mut clock = Clock::new(&limit);
        let d = clock.decide(6);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, d.reset);
        assert_eq!(d.remaining, 5);
    }

    #[test]
    fn idle_once_full_again() {
        let limit = TokenBucket::new(2, 1.0);
        let mut bucket = limit.fresh(0);
        assert!(limit.is_idle(&bucket, 0));
        limit.decide(&mut bucket, 0, 1);
        assert!(!limit.is_idle(&bucket, 999_999_999));
        assert!(limit.is_idle(&bucket, 1_000_000_000));
    }
}
