//! Sliding window log: at most `limit` units in any window `(now − window, now]`, exactly.
//!
//! # Reference semantics
//!
//! State: the admitted requests of the last `window`, oldest first, each with its instant and
//! cost. For a request of `cost` at `now`:
//!
//! ```text
//! forget entries at or before now − window              (they left the window)
//! used        = Σ cost of the entries left
//! admit iff used + cost ≤ limit; then log (now, cost)
//! remaining   = limit − used
//! reset       = newest + window − now                   until the log is empty
//! retry_after = s + window − now when refused, where s is the instant of the oldest entry
//!               whose leaving frees room for `cost`
//! ```
//!
//! The only algorithm here with no approximation at any edge; the price is memory linear in
//! the requests admitted per window (at most `limit` entries per key). Redis keeps the same log
//! as a sorted set (`sliding_log.lua`) with one member per unit.

use std::collections::VecDeque;
use std::time::Duration;

use super::{window_nanos, Algorithm, Decision};

/// The sliding window log's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindowLog {
    limit: u64,
    window: u64,
}

/// One key's log: (instant, cost) of each admitted request, oldest first, and their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Log {
    entries: VecDeque<(u64, u64)>,
    used: u64,
}

impl SlidingWindowLog {
    /// At most `limit` units in any `window` (at least 1 ns).
    pub fn new(limit: u64, window: Duration) -> Self {
        Self {
            limit,
            window: window_nanos(window),
        }
    }

    fn trim(&self, log: &mut Log, now: u64) {
        while let Some(&(at, cost)) = log.entries.front() {
            if at.saturating_add(self.window) > now {
                break;
            }
            log.entries.pop_front();
            log.used -= cost;
        }
    }
}

impl Algorithm for SlidingWindowLog {
    type State = Log;

    fn fresh(&self, _now: u64) -> Log {
        Log::default()
    }

    fn decide(&self, log: &mut Log, now: u64, cost: u64) -> Decision {
        self.trim(log, now);
        let allowed = log.used.saturating_add(cost) <= self.limit;
        let mut retry = 0;
        if allowed {
            if cost > 0 {
                // Entries stay in order even if the caller's clock steps back.
                let at = log.entries.back().map_or(now, |&(last, _)| last.max(now));
                log.entries.push_back((at, cost));
                log.used += cost;
            }
        } else if cost <= self.limit {
            // Free room for `cost`: drop the oldest entries until used + cost ≤ limit.
            let mut excess = log.used + cost - self.limit;
            for &(at, units) in &log.entries {
                if units >= excess {
                    retry = at + self.window - now;
                    break;
                }
                excess -= units;
            }
        }
        let reset = log
            .entries
            .back()
            .map_or(0, |&(at, _)| at + self.window - now);
        if !allowed && cost > self.limit {
            retry = reset;
        }
        Decision::new(
            allowed,
            self.limit,
            self.limit.saturating_sub(log.used),
            reset,
            retry,
        )
    }

    fn is_idle(&self, log: &Log, now: u64) -> bool {
        log.entries
            .back()
            .is_none_or(|&(at, _)| at.saturating_add(self.window) <= now)
    }

    fn quota(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::testing::Clock;
    use proptest::prelude::*;

    #[test]
    fn no_edge_burst() {
        let limit = SlidingWindowLog::new(5, Duration::from_secs(1));
        let mut clock = Clock::new(&limit);
        clock.advance(Duration::from_millis(999));
        assert!(clock.decide(5).allowed);
        clock.advance(Duration::from_millis(1));
        let refused = clock.decide(1);
        assert!(
            !refused.allowed,
            "the five of 1 ms ago are still in the window"
        );
        assert_eq!(refused.retry_after, Duration::from_millis(999));
        assert_eq!(refused.reset, Duration::from_millis(999));
        clock.advance(Duration::from_millis(999));
        assert!(
            clock.decide(5).allowed,
            "they left exactly one window after they came"
        );
    }

    #[test]
    fn entries_leave_one_by_one() {
        let limit = SlidingWindowLog::new(3, Duration::from_secs(1));
        let mut clock = Clock::new(&limit);
        for _ in 0..3 {
            assert!(clock.decide(1).allowed);
            clock.advance(Duration::from_millis(100));
        }
        // At 300 ms: entries at 0, 100, 200.
        let d = clock.decide(2);
        assert!(!d.allowed);
        assert_eq!(
            d.retry_after,
            Duration::from_millis(800),
            "after 0 and 100 leave"
        );
        assert_eq!(d.reset, Duration::from_millis(900));
        clock.advance(Duration::from_millis(700));
        let d = clock.decide(1);
        assert!(d.allowed, "at 1000 ms the entry of 0 ms left");
        assert_eq!(d.remaining, 0);
    }

    proptest! {
        /// No window of length `window` ever holds more than `limit` admitted units, and a
        /// request is refused only when admitting it would break that.
        #[test]
        fn exact_in_every_window(
            limit in 1u64..10,
            steps in prop::collection::vec((0u64..300, 1u64..4), 1..300),
        ) {
            let window = 1_000u64;
            let algo = SlidingWindowLog::new(limit, Duration::from_nanos(window));
            let mut log = algo.fresh(0);
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            let mut now = 0;
            for (gap, cost) in steps {
                now += gap;
                let in_window: u64 = admitted
                    .iter()
                    .filter(|(at, _)| at + window > now)
                    .map(|(_, c)| c)
                    .sum();
                let d = algo.decide(&mut log, now, cost);
                prop_assert_eq!(d.allowed, in_window + cost <= limit);
                if d.allowed {
                    admitted.push((now, cost));
                }
            }
        }
    }
}
