//! Exponential backoff with jitter, as in AWS's "Exponential Backoff and Jitter" (Brooker, 2015).
//!
//! The `n`-th retry (1 for the first) waits, before jitter, `min(cap, base × 2^(n-1))`:
//!
//! | jitter | wait |
//! |---|---|
//! | [`Jitter::None`] | exactly that |
//! | [`Jitter::Full`] | uniform in `[0, that]` — spreads retries most, the usual choice |
//! | [`Jitter::Equal`] | `that/2` + uniform in `[0, that/2]` — never much shorter than planned |
//! | [`Jitter::Decorrelated`] | `min(cap, uniform in [base, 3 × previous wait])`, previous starting at `base` |
//!
//! Randomness is passed in as a number in `[0, 1)`, so the result is reproducible in tests.
//!
//! ```
//! use std::time::Duration;
//! use sekisho_policy::backoff::{Backoff, Jitter};
//!
//! let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1), Jitter::None);
//! assert_eq!(backoff.delay(1, Duration::ZERO, 0.3), Duration::from_millis(50));
//! assert_eq!(backoff.delay(3, Duration::ZERO, 0.3), Duration::from_millis(200));
//! assert_eq!(backoff.delay(9, Duration::ZERO, 0.3), Duration::from_secs(1), "capped");
//! ```

use std::time::Duration;

/// How a wait is spread; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniform in `[0, wait]`.
    #[default]
    Full,
    /// `wait/2` + uniform in `[0, wait/2]`.
    Equal,
    /// Uniform in `[base, 3 × previous]`, capped.
    Decorrelated,
    /// No jitter.
    None,
}

/// Exponential backoff with a cap and jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// Waits from `base`, doubling, never above `cap` (a `cap` below `base` is raised to it).
    pub fn new(base: Duration, cap: Duration, jitter: Jitter) -> Self {
        Self {
            base,
            cap: cap.max(base),
            jitter,
        }
    }

    /// The first wait.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The wait before retry number `retry` (1 for the first); `previous` is the wait before the
    /// retry before it (only [`Jitter::Decorrelated`] looks at it; `ZERO` for none), `unit` a
    /// random number in `[0, 1)`.
    pub fn delay(&self, retry: u32, previous: Duration, unit: f64) -> Duration {
        let unit = unit.clamp(0.0, 1.0);
        let exponent = retry.saturating_sub(1).min(32);
        let planned = self
            .base
            .checked_mul(1u32 << exponent.min(31))
            .map_or(self.cap, |wait| wait.min(self.cap));
        match self.jitter {
            Jitter::None => planned,
            Jitter::Full => planned.mul_f64(unit),
            Jitter::Equal => planned / 2 + (planned / 2).mul_f64(unit),
            Jitter::Decorrelated => {
                let previous = previous.max(self.base);
                let high = previous.saturating_mul(3).min(self.cap);
                let span = high.saturating_sub(self.base);
                (self.base + span.mul_f64(unit)).min(self.cap)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BASE: Duration = Duration::from_millis(50);
    const CAP: Duration = Duration::from_secs(1);

    #[test]
    fn waits_double_from_the_base_up_to_the_cap() {
        let backoff = Backoff::new(BASE, CAP, Jitter::None);
        let waits: Vec<u128> = (1..=7)
            .map(|n| backoff.delay(n, Duration::ZERO, 0.5).as_millis())
            .collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX, Duration::ZERO, 0.5), CAP);
    }

    #[test]
    fn each_jitter_spreads_as_documented() {
        let full = Backoff::new(BASE, CAP, Jitter::Full);
        assert_eq!(full.delay(3, Duration::ZERO, 0.0), Duration::ZERO);
        assert_eq!(
            full.delay(3, Duration::ZERO, 0.5),
            Duration::from_millis(100)
        );
        let equal = Backoff::new(BASE, CAP, Jitter::Equal);
        assert_eq!(
            equal.delay(3, Duration::ZERO, 0.0),
            Duration::from_millis(100)
        );
        assert_eq!(
            equal.delay(3, Duration::ZERO, 0.5),
            Duration::from_millis(150)
        );
        let decorrelated = Backoff::new(BASE, CAP, Jitter::Decorrelated);
        // From [base, 3 × previous]: previous 100 ms → [50, 300].
        assert_eq!(decorrelated.delay(2, Duration::from_millis(100), 0.0), BASE);
        assert_eq!(
            decorrelated.delay(2, Duration::from_millis(100), 0.5),
            Duration::from_millis(175)
        );
        // A long previous wait: [base, cap].
        assert_eq!(
            decorrelated.delay(9, Duration::from_secs(5), 0.5),
            Duration::from_millis(525)
        );
    }

    proptest! {
        /// Every jitter stays within its documented range, and never above the cap.
        #[test]
        fn waits_stay_in_range(
            retry in 1u32..40,
            previous_ms in 0u64..5_000,
            unit in 0.0f64..1.0,
            base_ms in 1u64..500,
            cap_ms in 1u64..5_000,
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = Duration::from_millis(cap_ms).max(base);
            let planned = Backoff::new(base, cap, Jitter::None).delay(retry, Duration::ZERO, unit);
            prop_assert!(planned >= base && planned <= cap);
            let full = Backoff::new(base, cap, Jitter::Full).delay(retry, Duration::ZERO, unit);
            prop_assert!(full <= planned);
            let equal = Backoff::new(base, cap, Jitter::Equal).delay(retry, Duration::ZERO, unit);
            prop_assert!(equal >= planned / 2 && equal <= planned);
            let previous = Duration::from_millis(previous_ms);
            let decorrelated = Backoff::new(base, cap, Jitter::Decorrelated)
                .delay(retry, previous, unit);
            prop_assert!(decorrelated >= base.min(cap) && decorrelated <= cap);
            prop_assert!(decorrelated <= previous.max(base) * 3);
        }
    }
}
