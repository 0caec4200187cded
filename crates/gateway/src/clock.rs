//! The gateway's clocks: wall-clock milliseconds for what leaves the process (cache entries,
//! health-check records, circuit transitions), and the monotonic millisecond [`Clock`] of target
//! state. This module imports nothing of the gateway.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch at `at` (0 before it).
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch at `time` (0 before it).
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds on a [`Clock`]; 0 means "never".
pub(crate) type Millis = u64;

/// The gateway's clock for target state: milliseconds since the state registry was made, on
/// tokio's clock (so a paused test clock reaches it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// The instant the clock started.
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// `at` on this clock; never 0, which means "never".
    pub(crate) fn millis(&self, at: Instant) -> Millis {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}
