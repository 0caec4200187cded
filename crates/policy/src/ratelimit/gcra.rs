//! GCRA, the generic cell rate algorithm: the token bucket's admission kept as one timestamp,
//! the theoretical arrival time (TAT) at which the bucket would be full again.
//!
//! # Reference semantics
//!
//! With `T = 1 / per_second` (the emission interval) and `τ = burst × T` (how far the TAT may
//! run ahead of now), for a request of `cost` at `now`:
//!
//! ```text
//! tat         = max(TAT, now)                    a key never seen has TAT = now
//! admit iff tat + cost × T − now ≤ τ;  then TAT = tat + cost × T   (a refusal leaves it)
//! remaining   = ⌊(τ − (TAT − now)) / T⌋          the tokens a bucket would hold
//! reset       = TAT − now                        until the bucket is full
//! retry_after = tat + cost × T − now − τ         until the request would fit
//! ```
//!
//! For cost 1 the admission test is the classic `tat − now ≤ τ − T`. Reading
//! `tokens = burst − (tat − now) / T`, this is the token bucket with `capacity = burst` and
//! `refill = per_second`, decision for decision; it keeps 8 bytes per key instead of 16 and
//! needs no floating point on the hot path. The emission interval is rounded **up** to the
//! nanosecond, so rounding can only make the limit stricter (by less than one part in 10^8 at
//! 10 requests per second). Redis runs the same rules (`gcra.lua`).

use super::{Algorithm, Decision, NANOS_PER_SECOND};

/// GCRA's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    burst: u64,
    /// Nanoseconds per unit.
    interval: u64,
    /// `burst × interval`.
    tau: u64,
}

impl Gcra {
    /// Bursts of `burst`, `per_second` (> 0) sustained.
    pub fn new(burst: u64, per_second: f64) -> Self {
        let interval = (NANOS_PER_SECOND / per_second.max(f64::MIN_POSITIVE))
            .ceil()
            .clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        Self {
            burst,
            interval,
            tau: burst.saturating_mul(interval),
        }
    }
}

impl Algorithm for Gcra {
    /// The theoretical arrival time, in the caller's nanoseconds.
    type State = u64;

    fn fresh(&self, now: u64) -> u64 {
        now
    }

    fn decide(&self, tat_state: &mut u64, now: u64, cost: u64) -> Decision {
        let tat = (*tat_state).max(now);
        let after = tat.saturating_add(cost.saturating_mul(self.interval));
        let ahead = after - now;
        let allowed = ahead <= self.tau;
        let mut retry = 0;
        let kept = if allowed {
            *tat_state = after;
            after
        } else {
            retry = ahead - self.tau;
            tat
        };
        let reset = kept - now;
        let remaining = self.tau.saturating_sub(reset) / self.interval;
        if !allowed && cost > self.burst {
            retry = reset;
        }
        Decision::new(allowed, self.burst, remaining, reset, retry)
    }

    fn is_idle(&self, tat: &u64, now: u64) -> bool {
        *tat <= now
    }

    fn quota(&self) -> u64 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::testing::Clock;
    use crate::ratelimit::token_bucket::TokenBucket;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn burst_then_the_emission_interval() {
        let limit = Gcra::new(4, 10.0); // 4 at once, then one per 100 ms
        let mut clock = Clock::new(&limit);
        for left in [3, 2, 1, 0] {
            let d = clock.decide(1);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let refused = clock.decide(1);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.reset, Duration::from_millis(400));
        clock.advance(Duration::from_millis(100));
        assert!(clock.decide(1).allowed);
        assert!(!clock.decide(1).allowed);
    }

    #[test]
    fn cost_moves_the_tat_by_cost_intervals() {
        let limit = Gcra::new(10, 1.0);
        let mut clock = Clock::new(&limit);
        assert!(clock.decide(7).allowed);
        let d = clock.decide(4);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.remaining, 3);
        assert!(clock.decide(3).allowed);
        let never = clock.decide(11);
        assert!(!never.allowed);
        assert_eq!(never.retry_after, never.reset);
    }

    proptest! {
        /// GCRA and the token bucket with the same burst and a rate whose interval is a whole
        /// number of nanoseconds admit exactly the same requests.
        #[test]
        fn same_decisions_as_the_token_bucket(
            burst in 1u64..20,
            per_second in prop::sample::select(vec![1.0, 2.0, 4.0, 5.0, 10.0, 100.0, 1000.0]),
            steps in prop::collection::vec((0u64..400_000_000, 1u64..4), 1..200),
        ) {
            let gcra = Gcra::new(burst, per_second);
            let bucket = TokenBucket::new(burst, per_second);
            let mut g = Clock::new(&gcra);
            let mut b = Clock::new(&bucket);
            for (gap, cost) in steps {
                g.advance(Duration::from_nanos(gap));
                b.advance(Duration::from_nanos(gap));
                let (dg, db) = (g.decide(cost), b.decide(cost));
                prop_assert_eq!(dg.allowed, db.allowed);
                prop_assert_eq!(dg.remaining, db.remaining);
            }
        }
    }
}
