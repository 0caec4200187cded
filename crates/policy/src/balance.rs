//! Choosing a target of an upstream for one request.
//!
//! Round robin is the default: each target in turn, so load spreads evenly when targets are alike
//! and requests cost the same. It needs one atomic counter and no lock.
//!
//! ```
//! use sekisho_policy::balance::RoundRobin;
//! let rr = RoundRobin::new();
//! let picks: Vec<usize> = (0..4).map(|_| rr.pick(3)).collect();
//! assert_eq!(picks, [0, 1, 2, 0]);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

/// Each target in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A counter starting at the first target.
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of the target for the next request among `count` targets (0 when `count` is 0).
    pub fn pick(&self, count: usize) -> usize {
        if count <= 1 {
            return 0;
        }
        self.next.fetch_add(1, Ordering::Relaxed) % count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_evenly_over_the_targets() {
        let rr = RoundRobin::new();
        let mut counts = [0usize; 5];
        for _ in 0..500 {
            counts[rr.pick(5)] += 1;
        }
        assert_eq!(counts, [100; 5]);
    }

    #[test]
    fn a_single_or_empty_group_always_gets_index_zero() {
        let rr = RoundRobin::new();
        assert_eq!(rr.pick(1), 0);
        assert_eq!(rr.pick(0), 0);
    }
}
