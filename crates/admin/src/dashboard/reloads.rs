//! The recent config reloads the dashboard lists: the sampler sees the gateway's last reload once
//! a period and keeps the last few, newest first, so the page shows what was applied or refused
//! and when without the gateway keeping a log of its own.

use std::collections::VecDeque;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::clock::unix_ms;

/// Reloads listed in a snapshot at most, newest first.
pub(crate) const RECENT_RELOADS: usize = 10;

/// The recent config reloads, as the sampler sees them once a period: a reload is noticed by the
/// time of the gateway's last reload changing, and counted by the reload counters (several within
/// one period make one entry with their number).
#[derive(Default)]
pub(crate) struct ReloadLog {
    /// The last reload's time seen.
    last_at: Option<SystemTime>,
    /// The counters (ok, refused) at that time.
    counted: (f64, f64),
    /// Newest first, at most [`RECENT_RELOADS`].
    pub(crate) recent: VecDeque<Value>,
}

impl ReloadLog {
    /// Takes in this period's status and reload counters (ok, refused); a new last reload makes
    /// a new entry, and the oldest goes beyond [`RECENT_RELOADS`].
    pub(crate) fn observe(&mut self, status: &sekisho_gateway::Status, counted: (f64, f64)) {
        let Some(at) = status.last_reload.at else {
            self.counted = counted;
            return;
        };
        if self.last_at == Some(at) {
            return;
        }
        let reloads = (counted.0 - self.counted.0) + (counted.1 - self.counted.1);
        self.last_at = Some(at);
        self.counted = counted;
        if self.recent.len() == RECENT_RELOADS {
            self.recent.pop_back();
        }
        self.recent.push_front(json!({
            "at_unix_ms": unix_ms(at),
            "ok": status.last_reload.error.is_none(),
            "generation": status.generation,
            "error": status.last_reload.error,
            // Counters are whole numbers kept as f64 by the exposition.
            "reloads": reloads.max(1.0).round() as u64,
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn status(generation: u64, at_seconds: u64, error: Option<&str>) -> sekisho_gateway::Status {
        sekisho_gateway::Status {
            ready: true,
            draining: false,
            store_connecting: false,
            generation,
            loaded_at: UNIX_EPOCH,
            last_reload: sekisho_gateway::ReloadRecord {
                at: Some(UNIX_EPOCH + Duration::from_secs(at_seconds)),
                error: error.map(str::to_owned),
            },
        }
    }

    #[test]
    fn reloads_are_listed_once_newest_first_and_several_in_a_period_make_one_entry() {
        let mut log = ReloadLog::default();
        let never = sekisho_gateway::Status {
            last_reload: sekisho_gateway::ReloadRecord::default(),
            ..status(1, 0, None)
        };
        log.observe(&never, (0.0, 0.0));
        assert!(log.recent.is_empty());
        log.observe(&status(2, 10, None), (1.0, 0.0));
        // The same reload seen again adds nothing.
        log.observe(&status(2, 10, None), (1.0, 0.0));
        // Two refused within one period: one entry that counts them.
        log.observe(&status(2, 11, Some("bad")), (1.0, 2.0));
        let recent: Vec<&Value> = log.recent.iter().collect();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0]["ok"], false);
        assert_eq!(recent[0]["error"], "bad");
        assert_eq!(recent[0]["reloads"], 2);
        assert_eq!(recent[1]["ok"], true);
        assert_eq!(recent[1]["generation"], 2);
        assert_eq!(recent[1]["reloads"], 1);
    }

    #[test]
    fn the_recent_reloads_are_bounded() {
        let mut log = ReloadLog::default();
        for n in 1..=(RECENT_RELOADS as u64 + 5) {
            log.observe(&status(n + 1, n, None), (n as f64, 0.0));
        }
        assert_eq!(log.recent.len(), RECENT_RELOADS);
        assert_eq!(log.recent[0]["generation"], RECENT_RELOADS as u64 + 6);
    }
}
