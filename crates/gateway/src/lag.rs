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
//! `worker_total_busy_duration`). Both figures are smoothed over a few probes. With an event
//! loop per worker (`server.worker_model = "per_worker"`) each loop has its probe and its
//! figures, and a request reads its own loop's. This module imports only `worker`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::worker;

/// How often the probe measures.
pub(crate) const PERIOD: Duration = Duration::from_millis(10);

/// The workers' busy share (smoothed) from which the gateway counts as saturated.
pub(crate) const SATURATED_SHARE: f64 = 0.9;

/// The smoothed scheduling delay of each event loop, shared by the probes and the requests.
/// A request reads its own loop's (`worker::index`): with an event loop per worker, one
/// saturated worker sheds and stops accepting while the others go on.
#[derive(Debug)]
pub(crate) struct SchedulingLag {
    /// One per event loop; at least one.
    loops: Box<[Loop]>,
    /// The overload bound in µs (0: none).
    bound_micros: AtomicU64,
    /// The probes are wanted: a loop that starts later starts its own.
    wanted: AtomicBool,
}

/// One event loop's figures.
#[derive(Debug, Default)]
struct Loop {
    /// Smoothed delay in µs.
    micros: AtomicU64,
    /// The loop's busy share, smoothed, in millionths.
    busy_ppm: AtomicU64,
    probing: AtomicBool,
    /// The loop's runtime, once it runs (worker 0's is the runtime that starts the probes).
    handle: OnceLock<Handle>,
}

impl Default for SchedulingLag {
    fn default() -> Self {
        Self::new(1)
    }
}

impl SchedulingLag {
    /// Figures for `loops` event loops (at least one).
    pub(crate) fn new(loops: usize) -> Self {
        Self {
            loops: (0..loops.max(1)).map(|_| Loop::default()).collect(),
            bound_micros: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
        }
    }

    fn own(&self) -> &Loop {
        worker::own(&self.loops)
    }

    /// The current estimate of this thread's event loop (zero until its probe runs).
    pub(crate) fn current(&self) -> Duration {
        self.own().current()
    }

    /// The largest estimate over the event loops.
    pub(crate) fn worst(&self) -> Duration {
        self.loops
            .iter()
            .map(Loop::current)
            .max()
            .unwrap_or_default()
    }

    /// The event loops' busy share, smoothed (0 to 1), averaged over the loops probed.
    pub(crate) fn busy_share(&self) -> f64 {
        let probed = self
            .loops
            .iter()
            .filter(|lane| lane.probing.load(Ordering::Relaxed));
        let (sum, count) = probed.fold((0.0, 0_u32), |(sum, count), lane| {
            (sum + lane.busy_share(), count + 1)
        });
        if count == 0 {
            self.own().busy_share()
        } else {
            sum / f64::from(count)
        }
    }

    /// Each probed event loop's figures: its index, its delay and its busy share (none while
    /// no loop is probed).
    pub(crate) fn per_loop(&self) -> Vec<(String, Duration, f64)> {
        self.loops
            .iter()
            .enumerate()
            .filter(|(_, lane)| lane.probing.load(Ordering::Relaxed))
            .map(|(index, lane)| (index.to_string(), lane.current(), lane.busy_share()))
            .collect()
    }

    /// How much of a call's measured time is the gateway's own: its loop's delay, or all of
    /// it (`Duration::MAX`) while that loop is saturated.
    pub(crate) fn own_delay(&self) -> Duration {
        let own = self.own();
        if own.busy_share() >= SATURATED_SHARE {
            Duration::MAX
        } else {
            own.current()
        }
    }

    /// Sets the delay past which the gateway counts as overloaded (`None`: never).
    pub(crate) fn set_bound(&self, bound: Option<Duration>) {
        let micros = bound.map_or(0, |b| u64::try_from(b.as_micros()).unwrap_or(u64::MAX));
        self.bound_micros.store(micros, Ordering::Relaxed);
    }

    /// Whether this thread's event loop stands past the overload bound: two relaxed loads.
    pub(crate) fn overloaded(&self) -> bool {
        self.past_bound(self.own())
    }

    /// Whether event loop `index` stands past the overload bound.
    pub(crate) fn overloaded_loop(&self, index: usize) -> bool {
        self.loops
            .get(index)
            .is_some_and(|lane| self.past_bound(lane))
    }

    fn past_bound(&self, lane: &Loop) -> bool {
        let bound = self.bound_micros.load(Ordering::Relaxed);
        bound != 0 && lane.micros.load(Ordering::Relaxed) > bound
    }

    /// Starts the probes — worker 0's on the current runtime, each other worker's on its own
    /// once it runs ([`SchedulingLag::attach`]) — unless they run already; they stop by
    /// themselves when the lag is dropped.
    pub(crate) fn start(self: &Arc<Self>) {
        self.wanted.store(true, Ordering::Release);
        for index in 0..self.loops.len() {
            self.start_loop(index);
        }
    }

    /// Worker `index`'s event loop runs on `handle`: its probe starts there when wanted.
    pub(crate) fn attach(self: &Arc<Self>, index: usize, handle: Handle) {
        if let Some(lane) = self.loops.get(index) {
            let _ = lane.handle.set(handle);
            if self.wanted.load(Ordering::Acquire) {
                self.start_loop(index);
            }
        }
    }

    fn start_loop(self: &Arc<Self>, index: usize) {
        let Some(lane) = self.loops.get(index) else {
            return;
        };
        let handle = match lane.handle.get() {
            Some(handle) => handle.clone(),
            None if index == 0 => match Handle::try_current() {
                Ok(handle) => handle,
                Err(_) => return,
            },
            None => return,
        };
        if lane.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        handle.spawn(probe(Arc::downgrade(self), index));
    }

    /// One measurement of this thread's loop (tests).
    #[cfg(test)]
    pub(crate) fn observe(&self, delay: Duration) {
        self.own().observe(delay);
    }

    #[cfg(test)]
    fn observe_busy(&self, share: f64) {
        self.own().observe_busy(share);
    }
}

impl Loop {
    fn current(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    fn busy_share(&self) -> f64 {
        self.busy_ppm.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// One measurement, folded in with weight 1/4: a saturated loop shows within a few probes.
    fn observe(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        fold(&self.micros, micros);
    }

    /// The loop's busy share over one probe round, folded in with weight 1/2: a surge must
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

/// Measures event loop `index`, on it.
async fn probe(lag: Weak<SchedulingLag>, index: usize) {
    let metrics = Handle::current().metrics();
    let (mut busy_before, _) = busy_so_far(&metrics);
    let mut at_before = Instant::now();
    loop {
        tokio::time::sleep(PERIOD).await;
        let Some(lag) = lag.upgrade() else {
            return;
        };
        let Some(lane) = lag.loops.get(index) else {
            return;
        };
        let ready = Instant::now();
        tokio::task::yield_now().await;
        let now = Instant::now();
        lane.observe(now.saturating_duration_since(ready));
        let (busy, workers) = busy_so_far(&metrics);
        let wall = now.saturating_duration_since(at_before).as_secs_f64() * workers.max(1) as f64;
        if wall > 0.0 {
            lane.observe_busy(busy.saturating_sub(busy_before).as_secs_f64() / wall);
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

    /// Tasks that each hold the current (one-thread) loop for 5 ms, again and again: a probe
    /// that becomes ready waits behind them.
    async fn hold_the_loop() {
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
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_loop_shows_as_lag() {
        let lag = Arc::new(SchedulingLag::default());
        lag.start();
        hold_the_loop().await;
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

    #[test]
    fn each_worker_reads_its_own_loop() {
        let lag = SchedulingLag::new(2);
        lag.set_bound(Some(Duration::from_millis(50)));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                worker::enter(1);
                lag.observe(Duration::from_millis(400));
                assert!(lag.overloaded(), "worker 1's loop is past the bound");
            });
        });
        assert!(!lag.overloaded(), "worker 0's loop measured nothing");
        assert_eq!(lag.current(), Duration::ZERO);
        assert_eq!(lag.worst(), Duration::from_millis(100));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_loop_attached_later_is_probed_on_its_own_runtime() {
        let lag = Arc::new(SchedulingLag::new(2));
        lag.start();
        let other = Arc::clone(&lag);
        let worker_thread = std::thread::spawn(move || {
            worker::enter(1);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                other.attach(1, Handle::current());
                hold_the_loop().await;
                other.current()
            })
        });
        let busy_loop = tokio::task::spawn_blocking(move || worker_thread.join().unwrap())
            .await
            .unwrap();
        assert!(
            busy_loop >= Duration::from_millis(2),
            "worker 1's loop, busy for 5 ms at a time, measured {busy_loop:?}"
        );
        assert!(
            lag.current() < Duration::from_millis(2),
            "worker 0's loop was idle, measured {:?}",
            lag.current()
        );
        assert_eq!(lag.worst(), busy_loop.max(lag.current()));
    }
}
