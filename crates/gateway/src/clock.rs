//! The gateway's clocks: wall-clock milliseconds for what leaves the process (cache entries,
//! health-check records, circuit transitions), and the monotonic millisecond [`Clock`] of target
//! state. This module imports nothing of the gateway.

use std::cell::RefCell;
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

/// The current time as an HTTP-date, made once a second per thread.
pub(crate) fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            let mut bytes = [0u8; 29];
            let len = text.len().min(29);
            bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
            *cached = (second, bytes);
        }
        cached.1
    })
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
