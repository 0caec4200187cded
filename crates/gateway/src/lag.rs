//! The gateway's own scheduling delay: how long a task that has just become ready waits before
//! the runtime polls it, and whether the runtime's workers are saturated. On a saturated event
//! loop every latency the gateway measures includes its own queueing (several trips through the
//! run queue per call, and I/O readiness noticed late), so the adaptive concurrency limits and
//! the circuit breakers are told how much of a call's time is the gateway's
//! ([`SchedulingLag::own_delay`]): its loop's delay, or all of it while the workers are busy
//! [`SATURATED_SHARE`] of the time or more. The gateway's own saturation is then not mistaken
//! for a slow upstream (which would turn the gateway's capacity into refusals, or open the
//! circuits of healthy upstreams).
//!
//! The delay is also the gateway's own overload signal (`[server.overload] max_loop_delay`):
//! while it stands above that bound the gateway stops accepting connections and refuses
//! requests before routing ([`SchedulingLag::overloaded`]).
//!
//! A probe task, started only when some route has an adaptive limit, some upstream a circuit
//! breaker, or the server an overload bound, wakes every [`PERIOD`], yields once and measures
//! how long it waited to run again: one trip through the run queue, as a woken request sees
//! it; and it reads how busy the workers were since its last round (tokio's
//! `worker_total_busy_duration`). Both figures are smoothed over a few probes. This module
//! imports nothing of the gateway.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// How often the probe measures.
pub(crate) const PERIOD: Duration = Duration::from_millis(10);

/// The workers' busy share (smoothed) from which the gateway counts as saturated.
pub(crate) const SATURATED_SHARE: f64 = 0.9;

/// The smoothed scheduling delay, shared by the probe and the requests.
#[derive(Debug, Default)]
pub(crate) struct SchedulingLag {
    /// Smoothed delay in µs.
    micros: AtomicU64,
    /// The overload bound in µs (0: none).
    bound_micros: AtomicU64,
    /// The workers' busy share, smoothed, in millionths.
    busy_ppm: AtomicU64,
    probing: AtomicBool,
}

impl SchedulingLag {
    /// The current estimate (zero until the probe runs).
    pub(crate) fn current(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    /// The workers' busy share since the probe started, smoothed (0 to 1).
    pub(crate) fn busy_share(&self) -> f64 {
        self.busy_ppm.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// How much of a call's measured time is the gateway's own: the loop's delay, or all of it
    /// (`Duration::MAX`) while the workers are saturated.
    pub(crate) fn own_delay(&self) -> Duration {
        if self.busy_share() >= SATURATED_SHARE {
            Duration::MAX
        } else {
            self.current()
        }
    }

    /// Sets the delay past which the gateway counts as overloaded (`None`: never).
    pub(crate) fn set_bound(&self, bound: Option<Duration>) {
        let micros = bound.map_or(0, |b| u64::try_from(b.as_micros()).unwrap_or(u64::MAX));
        self.bound_micros.store(micros, Ordering::Relaxed);
    }

    /// Whether the delay stands past the overload bound: two relaxed loads.
    pub(crate) fn overloaded(&self) -> bool {
        let bound = self.bound_micros.load(Ordering::Relaxed);
        bound != 0 && self.micros.load(Ordering::Relaxed) > bound
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
        fold(&self.micros, micros);
    }

    /// The workers' busy share over one probe round, folded in with weight 1/2: a surge must
    /// show within a few probes, before the calls it slows are judged.
    fn observe_busy(&self, share: f64) {
        let sample = (share.clamp(0.0, 1.0) * 1e6) as u64;
        let old = self.busy_ppm.load(Ordering::Relaxed);
        self.busy_ppm.store(old / 2 + sample / 2, Ordering::Relaxed);
    }
}

/// Moves `value` a quarter of the way to `sample`.
fn fold(value: &AtomicU64, sample: u64) {
    let old = value.load(Ordering::Relaxed);
    let new = if sample >= old {
        old + (sample - old) / 4
    } else {
        old - (old - sample) / 4
    };
    value.store(new, Ordering::Relaxed);
}

/// The runtime's workers' busy time so far, summed.
fn busy_so_far(metrics: &tokio::runtime::RuntimeMetrics) -> (Duration, usize) {
    let workers = metrics.num_workers();
    let busy = (0..workers)
        .map(|worker| metrics.worker_total_busy_duration(worker))
        .sum();
    (busy, workers)
}

async fn probe(lag: Weak<SchedulingLag>) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let (mut busy_before, _) = busy_so_far(&metrics);
    let mut at_before = Instant::now();
    loop {
        tokio::time::sleep(PERIOD).await;
        let Some(lag) = lag.upgrade() else {
            return;
        };
        let ready = Instant::now();
        tokio::task::yield_now().await;
        let now = Instant::now();
        lag.observe(now.saturating_duration_since(ready));
        let (busy, workers) = busy_so_far(&metrics);
        let wall = now.saturating_duration_since(at_before).as_secs_f64() * workers.max(1) as f64;
        if wall > 0.0 {
            lag.observe_busy(busy.saturating_sub(busy_before).as_secs_f64() / wall);
        }
        (busy_before, at_before) = (busy, now);
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

    #[test]
    fn overloaded_only_past_a_bound_that_is_set() {
        let lag = SchedulingLag::default();
        lag.observe(Duration::from_millis(400));
        assert!(!lag.overloaded(), "no bound set");
        lag.set_bound(Some(Duration::from_millis(50)));
        assert!(lag.overloaded(), "{:?} past 50 ms", lag.current());
        lag.set_bound(Some(Duration::from_millis(100)));
        assert!(!lag.overloaded(), "{:?} within 100 ms", lag.current());
        lag.set_bound(None);
        lag.observe(Duration::from_secs(10));
        assert!(!lag.overloaded(), "the bound was removed");
    }

    #[test]
    fn a_saturated_runtime_owns_all_of_a_calls_time() {
        let lag = SchedulingLag::default();
        lag.observe(Duration::from_millis(4));
        assert_eq!(lag.own_delay(), Duration::from_millis(1));
        for _ in 0..20 {
            lag.observe_busy(1.0);
        }
        assert!(lag.busy_share() >= SATURATED_SHARE, "{}", lag.busy_share());
        assert_eq!(lag.own_delay(), Duration::MAX);
        for _ in 0..20 {
            lag.observe_busy(0.3);
        }
        assert_eq!(lag.own_delay(), lag.current());
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
        assert!(
            lag.busy_share() >= SATURATED_SHARE,
            "busy share {} of a loop that never idled",
            lag.busy_share()
        );
    }
}
