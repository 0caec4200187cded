//! The breaker's sliding window: the last calls, or the calls of the last seconds, and how many
//! of them failed or were slow.

use std::collections::VecDeque;
use std::time::Instant;

use super::Window;

/// The window's counts.
#[derive(Debug)]
pub(super) enum Counts {
    /// Ring of the last calls: (failed, slow).
    Calls {
        ring: VecDeque<(bool, bool)>,
        size: usize,
        failures: u32,
        slow: u32,
    },
    /// One-second buckets: (second, calls, failures, slow), oldest first, and their sums
    /// (kept as buckets come and go, so a decision never walks the window).
    Time {
        buckets: VecDeque<(u64, u32, u32, u32)>,
        sums: (u32, u32, u32),
        seconds: u64,
        epoch: Instant,
    },
}

impl Counts {
    pub(super) fn new(window: Window, epoch: Instant) -> Self {
        match window {
            Window::Calls(size) => Counts::Calls {
                ring: VecDeque::with_capacity(size as usize),
                size: size.max(1) as usize,
                failures: 0,
                slow: 0,
            },
            Window::Time(seconds) => Counts::Time {
                buckets: VecDeque::new(),
                sums: (0, 0, 0),
                seconds: u64::from(seconds.max(1)),
                epoch,
            },
        }
    }

    pub(super) fn clear(&mut self) {
        match self {
            Counts::Calls {
                ring,
                failures,
                slow,
                ..
            } => {
                ring.clear();
                *failures = 0;
                *slow = 0;
            }
            Counts::Time { buckets, sums, .. } => {
                buckets.clear();
                *sums = (0, 0, 0);
            }
        }
    }

    pub(super) fn add(&mut self, failed: bool, slow_call: bool, now: Instant) {
        match self {
            Counts::Calls {
                ring,
                size,
                failures,
                slow,
            } => {
                if ring.len() == *size {
                    if let Some((old_failed, old_slow)) = ring.pop_front() {
                        *failures -= u32::from(old_failed);
                        *slow -= u32::from(old_slow);
                    }
                }
                ring.push_back((failed, slow_call));
                *failures += u32::from(failed);
                *slow += u32::from(slow_call);
            }
            Counts::Time {
                buckets,
                sums,
                seconds,
                epoch,
            } => {
                let second = Self::roll(buckets, sums, *seconds, *epoch, now);
                sums.0 += 1;
                sums.1 += u32::from(failed);
                sums.2 += u32::from(slow_call);
                match buckets.back_mut() {
                    Some(bucket) if bucket.0 == second => {
                        bucket.1 += 1;
                        bucket.2 += u32::from(failed);
                        bucket.3 += u32::from(slow_call);
                    }
                    _ => buckets.push_back((second, 1, u32::from(failed), u32::from(slow_call))),
                }
            }
        }
    }

    /// Drops the buckets that left the window at `now`; returns the second `now` falls in.
    fn roll(
        buckets: &mut VecDeque<(u64, u32, u32, u32)>,
        sums: &mut (u32, u32, u32),
        seconds: u64,
        epoch: Instant,
        now: Instant,
    ) -> u64 {
        let second = now.saturating_duration_since(epoch).as_secs();
        while let Some(bucket) = buckets.front().copied() {
            if bucket.0 + seconds > second {
                break;
            }
            buckets.pop_front();
            sums.0 -= bucket.1;
            sums.1 -= bucket.2;
            sums.2 -= bucket.3;
        }
        second
    }

    /// (calls, failures, slow) in the window at `now`.
    pub(super) fn totals(&mut self, now: Instant) -> (u32, u32, u32) {
        match self {
            Counts::Calls {
                ring,
                failures,
                slow,
                ..
            } => (ring.len() as u32, *failures, *slow),
            Counts::Time {
                buckets,
                sums,
                seconds,
                epoch,
            } => {
                Self::roll(buckets, sums, *seconds, *epoch, now);
                *sums
            }
        }
    }
}
