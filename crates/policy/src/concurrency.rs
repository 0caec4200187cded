//! An adaptive concurrency limit: how many calls may be in flight at once, found by watching
//! latency rather than set by hand, and a fast refusal for everything beyond it.
//!
//! A fixed limit is either too high (a saturated service queues work until every caller times
//! out) or too low (capacity left unused). Like Netflix's concurrency-limits and Envoy's adaptive
//! concurrency filter, this limit follows Little's law: while latency stays near its long-run
//! level, more concurrency buys more throughput and the limit grows; when latency climbs, the
//! extra calls are only queueing, and the limit shrinks. What does not fit is refused at once
//! (the gateway answers 503 `OVERLOADED` with `Retry-After`), so those admitted are served well
//! instead of everyone badly.
//!
//! # How the limit moves
//!
//! Each admitted call samples its latency ([`Permit::sample`]). Samples are gathered per
//! *window*: a window closes when `window` has passed **and** it holds at least `min_samples`
//! samples; then the limit is recomputed once, from the window's mean latency (`short`) and the
//! largest in-flight count seen in it (`peak`).
//!
//! **Gradient** (Netflix's Gradient2):
//! - `long` is an exponential average of `short` over about [`LONG_WINDOWS`] windows, the
//!   latency the service has when healthy. When `long > 2 × short` (a slow period is over),
//!   `long` also decays by 5 % per window so the limit recovers quickly.
//! - If nothing was dropped and `peak < limit / 2`, the caller is *application-limited*: demand,
//!   not the service, set the latency, and the limit stays as it is (it would otherwise grow
//!   without bound while idle).
//! - `gradient = clamp(tolerance × long / short, 0.5, 1.0)`: 1 while latency stays within
//!   `tolerance` of its long-run level, down to 0.5 as it grows.
//! - `target = limit × gradient + √limit` (the square root is the queue allowed to form, so the
//!   limit keeps probing upwards while latency is flat);
//!   `limit ← limit × (1 − smoothing) + target × smoothing`, kept within `[min_limit,
//!   max_limit]`.
//! - **Recovery**: when a slow period is over — `short` is back within `tolerance` of the best
//!   latency seen (a slowly forgetting minimum) while `long` is still above `tolerance × short`
//!   — the limit is multiplied by `long / short`, at most doubled per window (as Envoy's
//!   gradient allows), so a limit cut to its floor is back within a few windows (under 2 s at
//!   the default 100 ms window) instead of creeping up by `√limit`. Latency rising past
//!   `tolerance × best` again ends the doubling.
//!
//! **AIMD**: a window with a drop (a timed-out call, or a sample slower than `timeout`)
//! multiplies the limit by `backoff_ratio`; a window without a drop whose `peak` reached half the
//! limit adds 1.
//!
//! **The caller's own delay** ([`Permit::sample_latency`]): a caller that is itself saturated
//! (a gateway whose event loop is the bottleneck) adds its own queueing to every latency it
//! measures. Cutting the limit then would not relieve the service — it is fine — but turn the
//! caller's capacity into refusals, which keep the caller just as busy: goodput collapses. So a
//! sample whose caller-side delay is at least a quarter of its latency says nothing about the
//! service: it counts towards closing the window but not in its mean, and a window where such
//! samples are the majority never lowers the limit; when `peak` reached half the limit it
//! doubles it, so the caller's own backlog is left to its own back-pressure (a saturated
//! listener's accept queue) instead of refused.
//!
//! # Cost
//!
//! Admission is one atomic add and one load ([`AdaptiveLimit::try_acquire`]); a sample is a few
//! atomic adds; the limit is recomputed under a lock taken with `try_lock` once per window, by
//! whichever call closes it, so no call ever waits on another.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use sekisho_policy::concurrency::{AdaptiveLimit, Algorithm, Sample, Settings};
//!
//! let settings = Settings {
//!     initial_limit: 2,
//!     min_limit: 1,
//!     ..Settings::default()
//! };
//! let limit = AdaptiveLimit::new(settings, Instant::now());
//! let mut first = limit.try_acquire().unwrap();
//! let _second = limit.try_acquire().unwrap();
//! assert!(limit.try_acquire().is_err()); // shed: two already in flight
//! first.sample(Sample::Success, Instant::now(), Instant::now());
//! drop(first);
//! assert!(limit.try_acquire().is_ok());
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Windows over which the gradient's long-run latency is averaged.
pub const LONG_WINDOWS: f64 = 600.0;

/// Bits of the packed window accumulator that hold the sample count; the rest hold the sum of
/// latencies in microseconds.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// A window closes by this many samples whatever its age, long before the count could overflow.
const MAX_WINDOW_SAMPLES: u64 = 1 << 20;
/// One sample's latency is capped so that a window's sum fits beside its count.
const MAX_SAMPLE_MICROS: u64 = 1 << 30;
/// A sample whose caller-side delay is at least 1/`OWN_DELAY_SHARE` of its latency is the
/// caller's, not the service's.
const OWN_DELAY_SHARE: u32 = 4;

/// How the limit follows latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Algorithm {
    /// Netflix's Gradient2: the limit follows the ratio of long-run to recent latency.
    Gradient {
        /// How much recent latency may exceed the long-run level before the limit shrinks
        /// (1.5: by half).
        tolerance: f64,
        /// The share of each new estimate taken into the limit (0 < smoothing ≤ 1).
        smoothing: f64,
    },
    /// Additive increase, multiplicative decrease on drops.
    Aimd {
        /// The limit is multiplied by this after a window with a drop (0.5 ≤ ratio < 1).
        backoff_ratio: f64,
        /// A sample slower than this counts as a drop.
        timeout: Duration,
    },
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::Gradient {
            tolerance: 1.5,
            smoothing: 0.2,
        }
    }
}

/// The settings of one adaptive limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How the limit moves.
    pub algorithm: Algorithm,
    /// The limit before any window has closed.
    pub initial_limit: u32,
    /// The limit never goes below this (≥ 1).
    pub min_limit: u32,
    /// The limit never goes above this.
    pub max_limit: u32,
    /// A window lasts at least this long …
    pub window: Duration,
    /// … and holds at least this many samples.
    pub min_samples: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            initial_limit: 100,
            min_limit: 5,
            max_limit: 1000,
            window: Duration::from_millis(100),
            min_samples: 10,
        }
    }
}

/// How an admitted call ended, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// The call was answered; its latency is a sample.
    Success,
    /// The call timed out or was refused for overload: a sign of saturation, and its latency a
    /// sample.
    Dropped,
}

/// A call refused because the limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// The limit at the time.
    pub limit: u32,
}

/// What the limit looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Calls admitted and not yet done.
    pub in_flight: u32,
    /// The current limit.
    pub limit: u32,
    /// Calls refused so far.
    pub shed: u64,
    /// Windows closed so far (each one a recomputation of the limit).
    pub windows: u64,
    /// The gradient's long-run latency (zero before the first window, and for AIMD).
    pub long_latency: Duration,
}

/// An adaptive concurrency limit, shared by every call it governs.
#[derive(Debug)]
pub struct AdaptiveLimit {
    settings: Settings,
    epoch: Instant,
    in_flight: AtomicU32,
    limit: AtomicU32,
    /// This window's samples: `(sum of latencies in µs << COUNT_BITS) | count`, one atomic so
    /// that a closing window takes both at once.
    samples: AtomicU64,
    dropped: AtomicU32,
    /// This window's samples that the caller's own delay dominated (not in `samples`).
    own_delayed: AtomicU32,
    peak: AtomicU32,
    /// When this window opened, in µs since `epoch`.
    window_start: AtomicU64,
    shed: AtomicU64,
    windows: AtomicU64,
    estimate: Mutex<Estimate>,
}

#[derive(Debug)]
struct Estimate {
    /// The limit with its fractional part, so small steps add up.
    limit: f64,
    /// The gradient's long-run latency in µs (0 until the first window).
    long_micros: f64,
    /// The lowest window latency in µs, slowly forgetting (it climbs by `1/LONG_WINDOWS` of the
    /// gap each window above it): the service's latency when it is not queueing.
    best_micros: f64,
}

/// One window's figures, as they enter the limit's arithmetic.
#[derive(Debug, Clone, Copy)]
struct WindowFigures {
    /// Mean latency of the samples that were the service's (0 when there were none).
    mean_micros: f64,
    /// Samples the service's latency decided.
    attributed: u64,
    /// Samples the caller's own delay dominated.
    own_delayed: u32,
    dropped: u32,
    peak: u32,
}

impl AdaptiveLimit {
    /// A limit with `settings` (bounds put in order: `1 ≤ min ≤ initial ≤ max`), its clock
    /// starting at `now`.
    pub fn new(settings: Settings, now: Instant) -> Arc<Self> {
        let settings = Settings {
            min_limit: settings.min_limit.max(1),
            max_limit: settings.max_limit.max(settings.min_limit.max(1)),
            min_samples: settings.min_samples.max(1),
            ..settings
        };
        let initial = settings
            .initial_limit
            .clamp(settings.min_limit, settings.max_limit);
        Arc::new(Self {
            settings,
            epoch: now,
            in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(initial),
            samples: AtomicU64::new(0),
            dropped: AtomicU32::new(0),
            own_delayed: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            estimate: Mutex::new(Estimate {
                limit: f64::from(initial),
                long_micros: 0.0,
                best_micros: 0.0,
            }),
        })
    }

    /// The settings in force (after the bounds were put in order).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Admits a call if fewer than the limit are in flight; the permit holds its place until
    /// dropped.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Shed> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let limit = self.limit.load(Ordering::Relaxed);
        if before >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(Shed { limit });
        }
        Ok(Permit {
            limit: Arc::clone(self),
            sampled: false,
        })
    }

    /// Sheds a call now (counted as [`AdaptiveLimit::try_acquire`] counts one) when no place is
    /// free, and takes none otherwise: a caller that can refuse before it has done any work
    /// asks this first, then takes its place with `try_acquire` where the call is made (which
    /// may still shed it, if the places filled meanwhile).
    pub fn shed_if_full(&self) -> Result<(), Shed> {
        let limit = self.limit.load(Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) >= limit {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(Shed { limit });
        }
        Ok(())
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// What the limit looks like now.
    pub fn usage(&self) -> Usage {
        let long_micros = match self.estimate.lock() {
            Ok(estimate) => estimate.long_micros,
            Err(poisoned) => poisoned.into_inner().long_micros,
        };
        Usage {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            limit: self.limit(),
            shed: self.shed.load(Ordering::Relaxed),
            windows: self.windows.load(Ordering::Relaxed),
            long_latency: Duration::from_micros(long_micros as u64),
        }
    }

    fn micros_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    fn record(&self, latency: Duration, own_delay: Duration, sample: Sample, now: Instant) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_SAMPLE_MICROS);
        let dropped = match (sample, self.settings.algorithm) {
            (Sample::Dropped, _) => true,
            (Sample::Success, Algorithm::Aimd { timeout, .. }) => latency > timeout,
            (Sample::Success, Algorithm::Gradient { .. }) => false,
        };
        if dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.peak
            .fetch_max(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        let own = !dropped
            && !own_delay.is_zero()
            && own_delay.saturating_mul(OWN_DELAY_SHARE) >= latency;
        let count = if own {
            let own_delayed = self.own_delayed.fetch_add(1, Ordering::AcqRel) + 1;
            (self.samples.load(Ordering::Acquire) & COUNT_MASK) + u64::from(own_delayed)
        } else {
            let before = self
                .samples
                .fetch_add((micros << COUNT_BITS) | 1, Ordering::AcqRel);
            (before & COUNT_MASK) + 1 + u64::from(self.own_delayed.load(Ordering::Acquire))
        };
        let now_micros = self.micros_since_epoch(now);
        let opened = self.window_start.load(Ordering::Acquire);
        let window = u64::try_from(self.settings.window.as_micros()).unwrap_or(u64::MAX);
        let due = now_micros.saturating_sub(opened) >= window
            && count >= u64::from(self.settings.min_samples);
        if due || count >= MAX_WINDOW_SAMPLES {
            self.close_window(opened, now_micros);
        }
    }

    /// Recomputes the limit from the window that opened at `opened`, unless another call is
    /// doing so or has just done it.
    fn close_window(&self, opened: u64, now_micros: u64) {
        let Ok(mut estimate) = self.estimate.try_lock() else {
            return;
        };
        if self.window_start.load(Ordering::Acquire) != opened {
            return;
        }
        let packed = self.samples.swap(0, Ordering::AcqRel);
        let own_delayed = self.own_delayed.swap(0, Ordering::AcqRel);
        let dropped = self.dropped.swap(0, Ordering::AcqRel);
        let peak = self.peak.swap(0, Ordering::AcqRel);
        self.window_start.store(now_micros, Ordering::Release);
        let count = packed & COUNT_MASK;
        if count == 0 && own_delayed == 0 {
            return;
        }
        let figures = WindowFigures {
            mean_micros: if count == 0 {
                0.0
            } else {
                (packed >> COUNT_BITS) as f64 / count as f64
            },
            attributed: count,
            own_delayed,
            dropped,
            peak,
        };
        let next = self.next_limit(&mut estimate, figures);
        estimate.limit = next;
        self.limit.store(next.round() as u32, Ordering::Relaxed);
        self.windows.fetch_add(1, Ordering::Relaxed);
    }

    fn next_limit(&self, estimate: &mut Estimate, window: WindowFigures) -> f64 {
        let Settings {
            min_limit,
            max_limit,
            ..
        } = self.settings;
        let limit = estimate.limit;
        let unqueued_step = match self.settings.algorithm {
            Algorithm::Gradient { smoothing, .. } => limit.sqrt() * smoothing.clamp(0.0, 1.0),
            Algorithm::Aimd { .. } => 1.0,
        };
        if window.dropped == 0 && u64::from(window.own_delayed) >= window.attributed {
            // The caller's own delay dominated: nothing is known of the service's queue, and
            // refusing would only spend the caller's saturated capacity on refusals. Never lower
            // the limit for it; when the limit is in use, make room for the demand at once
            // (double it) so the caller's backlog is left to its own back-pressure.
            let next = if f64::from(window.peak) * 2.0 >= limit {
                (limit * 2.0).max(limit + unqueued_step)
            } else {
                limit
            };
            return next.clamp(f64::from(min_limit), f64::from(max_limit));
        }
        let next = match self.settings.algorithm {
            Algorithm::Gradient {
                tolerance,
                smoothing,
            } => {
                let short = window.mean_micros.max(1.0);
                if estimate.long_micros <= 0.0 {
                    estimate.long_micros = short;
                    estimate.best_micros = short;
                } else {
                    estimate.long_micros += (short - estimate.long_micros) / LONG_WINDOWS;
                    if short < estimate.best_micros {
                        estimate.best_micros = short;
                    } else {
                        estimate.best_micros += (short - estimate.best_micros) / LONG_WINDOWS;
                    }
                }
                if estimate.long_micros > 2.0 * short {
                    estimate.long_micros *= 0.95;
                }
                if window.dropped == 0 && f64::from(window.peak) < limit / 2.0 {
                    return limit;
                }
                if window.dropped == 0
                    && estimate.long_micros > tolerance * short
                    && short <= tolerance * estimate.best_micros
                {
                    // A slow period is over: latency is back near its best, well under its
                    // long-run level. Grow by that ratio (at most doubling per window, as
                    // Envoy's gradient does) so the limit is back within a few windows instead
                    // of creeping up by √limit; a latency that rises again ends it.
                    let ratio = (estimate.long_micros / short).min(2.0);
                    return (limit * ratio).clamp(f64::from(min_limit), f64::from(max_limit));
                }
                let gradient = (tolerance * estimate.long_micros / short).clamp(0.5, 1.0);
                let target = limit * gradient + limit.sqrt();
                let smoothing = smoothing.clamp(f64::MIN_POSITIVE, 1.0);
                limit * (1.0 - smoothing) + target * smoothing
            }
            Algorithm::Aimd { backoff_ratio, .. } => {
                if window.dropped > 0 {
                    limit * backoff_ratio.clamp(0.5, 0.999)
                } else if f64::from(window.peak) * 2.0 >= limit {
                    limit + 1.0
                } else {
                    limit
                }
            }
        };
        next.clamp(f64::from(min_limit), f64::from(max_limit))
    }
}

/// An admitted call's place under the limit, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<AdaptiveLimit>,
    sampled: bool,
}

impl Permit {
    /// Records how the call that started at `started` ended at `now`. Only the first sample of
    /// a permit counts; a permit dropped without one is not a sample (the caller went away, or
    /// something else refused the call).
    pub fn sample(&mut self, sample: Sample, started: Instant, now: Instant) {
        self.sample_latency(
            sample,
            now.saturating_duration_since(started),
            Duration::ZERO,
            now,
        );
    }

    /// Records how the call ended at `now`, its `latency` measured by the caller, of which
    /// `own_delay` is (an estimate of) the caller's own queueing — a saturated event loop's
    /// delay in polling the call. A sample the caller's delay dominates is not taken as the
    /// service's latency (see the module's docs). Only the first sample of a permit counts.
    pub fn sample_latency(
        &mut self,
        sample: Sample,
        latency: Duration,
        own_delay: Duration,
        now: Instant,
    ) {
        if std::mem::replace(&mut self.sampled, true) {
            return;
        }
        self.limit.record(latency, own_delay, sample, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
