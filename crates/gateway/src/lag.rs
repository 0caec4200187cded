//! The gateway's own scheduling delay: how long a task that has just become ready waits before
//! the runtime polls it. On a saturated event loop every latency the gateway measures includes
//! this wait; the adaptive concurrency limits and the circuit breakers are told it, so the
//! gateway's own saturation is not mistaken for a slow upstream (which would turn the gateway's
//! capacity into refusals, or open the circuits of healthy upstreams).
//!
//! A probe task, started only when some route has an adaptive limit or some upstream a circuit
//! breaker, wakes every
//! [`PERIOD`], yields once and measures how long it waited to run again: one trip through the
//! run queue, as a woken request sees it. Its figure is smoothed over a few probes. This module
//! imports nothing of the gateway.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// How often the probe measures.
pub(crate) const PERIOD: Duration = Duration::from_millis(10);

/// The smoothed scheduling delay, shared by the probe and the requests.
#[derive(Debug, Default)]
pub(crate) struct SchedulingLag {
    /// Smoothed delay in µs.
    micros: AtomicU64,
    probing: AtomicBool,
}

impl SchedulingLag {
    /// The current estimate (zero until the probe runs).
    pub(crate) fn current(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    /// Starts the probe on the current runtime unless it runs already; it stops by itself
    /// when the lag is dropped.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            self.probing.store(false, Ordering::Release);
            return;
        }
        tokio::spawn(probe(Arc::downgrade(self)));
    }

    /// One measurement, folded in with weight 1/4: a saturated loop shows within a few probes.
    fn observe(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        let old = self.micros.load(Ordering::Relaxed);
        let new = if micros >= old {
            old + (micros - old) / 4
        } else {
            old - (old - micros) / 4
        };
        self.micros.store(new, Ordering::Relaxed);
    }
}

async fn probe(lag: Weak<SchedulingLag>) {
    loop {
        tokio::time::sleep(PERIOD).await;
        let Some(lag) = lag.upgrade() else {
            return;
        };
        let ready = Instant::now();
        tokio::task::yield_now().await;
        lag.observe(ready.elapsed());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_moves_a_quarter_of_the_way_each_probe() {
        let lag = SchedulingLag::default();
        lag.observe(Duration::from_micros(4000));
        assert_eq!(lag.current(), Duration::from_micros(1000));
        lag.observe(Duration::from_micros(4000));
        assert_eq!(lag.current(), Duration::from_micros(1750));
        lag.observe(Duration::ZERO);
        assert_eq!(lag.current(), Duration::from_micros(1313));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_loop_shows_as_lag() {
        let lag = Arc::new(SchedulingLag::default());
        lag.start();
        // Tasks that each hold the only thread for 5 ms, again and again: a probe that becomes
        // ready waits behind them.
        let busy: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(async {
                    for _ in 0..40 {
                        std::thread::sleep(Duration::from_millis(5));
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in busy {
            task.await.unwrap();
        }
        assert!(
            lag.current() >= Duration::from_millis(2),
            "lag {:?} on a loop busy for 5 ms at a time",
            lag.current()
        );
    }
}
