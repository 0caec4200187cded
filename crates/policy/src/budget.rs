//! A retry budget (Finagle's and Linkerd's idea): retries may add at most `ratio` of the
//! requests of the last `window`, plus a small floor per second so that a quiet service can
//! still retry. In an outage, when every call fails, retries therefore multiply the load by at
//! most `1 + ratio` instead of by the number of attempts.
//!
//! Every request [`deposit`](RetryBudget::deposit)s once; every retry must
//! [`withdraw`](RetryBudget::withdraw) first — a retry that waits out a backoff withdraws when it
//! is decided, not when it is sent, so backed-off retries count too. Counts live in one-second
//! buckets over the window; time is passed in.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use sekisho_policy::budget::RetryBudget;
//!
//! let now = Instant::now();
//! let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10), now);
//! for _ in 0..10 {
//!     budget.deposit(now);
//! }
//! assert!(budget.withdraw(now));
//! assert!(budget.withdraw(now));
//! assert!(!budget.withdraw(now), "2 retries for 10 requests at 20 %");
//! ```

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_second: u32,
    seconds: u64,
    epoch: Instant,
    /// (second, requests, retries), oldest first.
    buckets: Mutex<VecDeque<(u64, u64, u64)>>,
}

/// What the budget holds now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetFigures {
    /// Requests in the window.
    pub requests: u64,
    /// Retries in the window.
    pub retries: u64,
    /// Retries still allowed now.
    pub available: u64,
}

impl RetryBudget {
    /// Retries up to `ratio` × the requests of the last `window` (whole seconds, at least one)
    /// plus `floor_per_second` × its seconds.
    pub fn new(ratio: f64, floor_per_second: u32, window: Duration, epoch: Instant) -> Self {
        Self {
            ratio: ratio.max(0.0),
            floor_per_second,
            seconds: window.as_secs().max(1),
            epoch,
            buckets: Mutex::new(VecDeque::new()),
        }
    }

    /// A request (first attempt) was made at `now`.
    pub fn deposit(&self, now: Instant) {
        self.update(now, |bucket| bucket.1 += 1);
    }

    /// Takes one retry from the budget at `now`; `false` when it is spent (do not retry).
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut buckets = self.lock();
        let second = self.roll(&mut buckets, now);
        if self.figures_of(&buckets).available == 0 {
            return false;
        }
        Self::bucket(&mut buckets, second).2 += 1;
        true
    }

    /// Requests, retries and retries left at `now`.
    pub fn figures(&self, now: Instant) -> BudgetFigures {
        let mut buckets = self.lock();
        self.roll(&mut buckets, now);
        self.figures_of(&buckets)
    }

    fn figures_of(&self, buckets: &VecDeque<(u64, u64, u64)>) -> BudgetFigures {
        let (requests, retries) = buckets.iter().fold((0, 0), |(q, r), b| (q + b.1, r + b.2));
        let allowed = (self.ratio * requests as f64).floor() as u64
            + u64::from(self.floor_per_second) * self.seconds;
        BudgetFigures {
            requests,
            retries,
            available: allowed.saturating_sub(retries),
        }
    }

    fn update(&self, now: Instant, change: impl FnOnce(&mut (u64, u64, u64))) {
        let mut buckets = self.lock();
        let second = self.roll(&mut buckets, now);
        change(Self::bucket(&mut buckets, second));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, u64, u64)>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the buckets that left the window; the second `now` falls in.
    fn roll(&self, buckets: &mut VecDeque<(u64, u64, u64)>, now: Instant) -> u64 {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        while buckets
            .front()
            .is_some_and(|bucket| bucket.0 + self.seconds <= second)
        {
            buckets.pop_front();
        }
        second
    }

    fn bucket(buckets: &mut VecDeque<(u64, u64, u64)>, second: u64) -> &mut (u64, u64, u64) {
        if buckets.back().is_none_or(|bucket| bucket.0 != second) {
            buckets.push_back((second, 0, 0));
        }
        let last = buckets.len() - 1;
        &mut buckets[last]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_floor_lets_a_quiet_service_retry() {
        let now = Instant::now();
        let budget = RetryBudget::new(0.1, 1, Duration::from_secs(3), now);
        // No requests at all: 1 per second × 3 seconds.
        assert_eq!(budget.figures(now).available, 3);
        assert!(budget.withdraw(now));
        assert!(budget.withdraw(now));
        assert!(budget.withdraw(now));
        assert!(!budget.withdraw(now));
    }

    #[test]
    fn spent_retries_come_back_when_they_leave_the_window() {
        let now = Instant::now();
        let budget = RetryBudget::new(0.5, 0, Duration::from_secs(2), now);
        budget.deposit(now);
        budget.deposit(now);
        assert!(budget.withdraw(now));
        assert!(!budget.withdraw(now));
        // Two seconds later the old requests and retry are gone; new requests refill it.
        let later = now + Duration::from_secs(2);
        assert_eq!(budget.figures(later).requests, 0);
        budget.deposit(later);
        budget.deposit(later);
        assert!(budget.withdraw(later));
    }

    proptest! {
        /// With every call failing and every failure wanting up to `attempts - 1` retries, no
        /// retry is granted that would put the window's retries above ratio × its requests +
        /// floor × its seconds (the issue's bound, at the moment of each grant: later, as old
        /// requests leave the window, the same retries are simply no longer counted).
        #[test]
        fn a_retry_is_granted_only_within_ratio_of_requests_plus_the_floor(
            ratio in 0.0f64..1.0,
            floor in 0u32..3,
            attempts in 1u32..6,
            steps in proptest::collection::vec(0u64..400, 1..200),
        ) {
            let start = Instant::now();
            let budget = RetryBudget::new(ratio, floor, Duration::from_secs(10), start);
            let mut now = start;
            let mut log: Vec<(Instant, bool)> = Vec::new();
            let mut granted = 0u64;
            for step in steps {
                now += Duration::from_millis(step);
                budget.deposit(now);
                log.push((now, false));
                for _ in 1..attempts {
                    if !budget.withdraw(now) {
                        continue;
                    }
                    granted += 1;
                    log.push((now, true));
                    // The window at `now`, as whole seconds, recounted from the log.
                    let second = |t: Instant| t.duration_since(start).as_secs();
                    let in_window: Vec<&(Instant, bool)> = log
                        .iter()
                        .filter(|(t, _)| second(*t) + 10 > second(now))
                        .collect();
                    let requests = in_window.iter().filter(|(_, retry)| !retry).count() as f64;
                    let retries = in_window.iter().filter(|(_, retry)| *retry).count() as f64;
                    prop_assert!(retries <= (ratio * requests).floor() + f64::from(floor) * 10.0);
                }
            }
            // And a budget that allows something does grant it: with a floor, a quiet start
            // always has retries to give.
            if floor > 0 && attempts > 1 {
                prop_assert!(granted > 0);
            }
        }
    }
}
