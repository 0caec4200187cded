//! Fixed window: at most `limit` units in each window `[k × window, (k + 1) × window)`.
//!
//! # Reference semantics
//!
//! State: the start of the window counted and the units admitted in it; a state of an earlier
//! window counts as empty. For a request of `cost` at `now`:
//!
//! ```text
//! start       = now − now mod window
//! admit iff used + cost ≤ limit; then used = used + cost
//! remaining   = limit − used
//! reset       = start + window − now                  the end of the window
//! retry_after = start + window − now when refused     (the next window is empty)
//! ```
//!
//! Windows are aligned on the clock's zero, so every key shares the same edges. The cost of its
//! simplicity is the edge burst: up to `2 × limit` may pass within one window's length straddling
//! an edge (the sliding algorithms exist for that). Redis runs the same rules
//! (`fixed_window.lua`), aligned on the Unix epoch.

use std::time::Duration;

use super::{window_nanos, Algorithm, Decision};

/// The fixed window's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindow {
    limit: u64,
    window: u64,
}

/// One key's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u64,
    used: u64,
}

impl FixedWindow {
    /// At most `limit` units per `window` (at least 1 ns).
    pub fn new(limit: u64, window: Duration) -> Self {
        Self {
            limit,
            window: window_nanos(window),
        }
    }

    fn start(&self, now: u64) -> u64 {
        now - now % self.window
    }
}

impl Algorithm for FixedWindow {
    type State = Window;

    fn fresh(&self, now: u64) -> Window {
        Window {
            start: self.start(now),
            used: 0,
        }
    }

    fn decide(&self, state: &mut Window, now: u64, cost: u64) -> Decision {
        let start = self.start(now);
        if state.start != start {
            *state = Window { start, used: 0 };
        }
        let reset = start + self.window - now;
        let allowed = state.used.saturating_add(cost) <= self.limit;
        if allowed {
            state.used += cost;
        }
        let retry = if allowed { 0 } else { reset };
        Decision::new(
            allowed,
            self.limit,
            self.limit.saturating_sub(state.used),
            reset,
            retry,
        )
    }

    fn is_idle(&self, state: &Window, now: u64) -> bool {
        state.used == 0 || state.start != self.start(now)
    }

    fn quota(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::testing::Clock;

    #[test]
    fn counts_within_the_window_and_starts_over_at_its_edge() {
        let limit = FixedWindow::new(3, Duration::from_secs(1));
        let mut clock = Clock::new(&limit);
        clock.advance(Duration::from_millis(200));
        for left in [2, 1, 0] {
            let d = clock.decide(1);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            assert_eq!(d.reset, Duration::from_millis(800));
        }
        let refused = clock.decide(1);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(800));

        clock.advance(Duration::from_millis(799));
        assert!(!clock.decide(1).allowed, "still the same window");
        clock.advance(Duration::from_millis(1));
        let d = clock.decide(1);
        assert!(d.allowed, "the edge at 1 s starts a new window");
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset, Duration::from_secs(1));
    }

    #[test]
    fn the_edge_burst_is_the_known_weakness() {
        let limit = FixedWindow::new(5, Duration::from_secs(1));
        let mut clock = Clock::new(&limit);
        clock.advance(Duration::from_millis(999));
        assert!(clock.decide(5).allowed);
        clock.advance(Duration::from_millis(1));
        assert!(
            clock.decide(5).allowed,
            "10 units within 1 ms across the edge"
        );
    }

    #[test]
    fn a_refusal_counts_nothing() {
        let limit = FixedWindow::new(4, Duration::from_secs(1));
        let mut clock = Clock::new(&limit);
        assert!(clock.decide(3).allowed);
        assert!(!clock.decide(2).allowed);
        assert!(clock.decide(1).allowed);
    }

    #[test]
    fn idle_once_the_window_ended() {
        let limit = FixedWindow::new(4, Duration::from_secs(1));
        let mut w = limit.fresh(0);
        limit.decide(&mut w, 10, 1);
        assert!(!limit.is_idle(&w, 999_999_999));
        assert!(limit.is_idle(&w, 1_000_000_000));
    }
}
