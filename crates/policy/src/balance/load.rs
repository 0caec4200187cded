//! The live figures of one target: requests in flight, peak-EWMA latency, recent error rate.
//!
//! Updated by every request that reaches the target and read by the balancers, from many
//! threads at once; so each figure is an atomic, and no lock is taken. Two completions that
//! update the latency estimate at the same instant may lose one observation: a statistic, not
//! an account, and the price of staying lock-free.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Estimate of a target not yet heard from (Linkerd's default): neither flooded as if it were
/// free nor starved as if it were slow.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// Time constant of the latency decay (Linkerd's default): an estimate loses 63 % of its weight
/// in this time, so a target that was slow once is tried again after a while.
pub const DECAY: Duration = Duration::from_secs(10);

/// Weight of the newest outcome in the error-rate average: about the last 20 requests count.
const ERROR_ALPHA: f64 = 0.05;

/// Live figures of one target; see the module docs.
#[derive(Debug)]
pub struct TargetLoad {
    epoch: Instant,
    in_flight: AtomicU32,
    /// Peak-EWMA latency in nanoseconds, as f64 bits.
    latency_ns: AtomicU64,
    /// When `latency_ns` was last updated, in nanoseconds since `epoch`.
    updated_ns: AtomicU64,
    /// EWMA of failures (1) and successes (0), as f64 bits.
    error_rate: AtomicU64,
}

impl TargetLoad {
    /// A target not heard from yet: nothing in flight, latency [`DEFAULT_RTT`], no errors.
    pub fn new(now: Instant) -> Self {
        Self {
            epoch: now,
            in_flight: AtomicU32::new(0),
            latency_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            updated_ns: AtomicU64::new(0),
            error_rate: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// A request to this target begins.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request that [`begin`](Self::begin) counted has ended after `latency`; `failed` when it
    /// counts as a failure (connect error, timeout, failure status).
    pub fn end(&self, latency: Duration, failed: bool, now: Instant) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.observe(latency, failed, now);
    }

    /// A request that [`begin`](Self::begin) counted is over, its outcome recorded apart with
    /// [`observe`](Self::observe) (a proxy learns the latency at the response head but holds the
    /// target until the last byte of the body).
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records an outcome without touching the in-flight count.
    ///
    /// A failure counts as twice the slower of its latency and the current estimate: a target
    /// that fails fast must not look like the fastest one and draw all the traffic.
    pub fn observe(&self, latency: Duration, failed: bool, now: Instant) {
        let at = self.nanos_since_epoch(now);
        let mut rtt = latency.as_nanos() as f64;
        if failed {
            rtt = 2.0 * rtt.max(self.decayed(at));
        }
        // Peak: a slower answer replaces the estimate at once; faster ones are blended in with
        // the weight the stored estimate still has after the time since its update (as tower's
        // PeakEwma does: the decay is applied once, here, not also to the value blended).
        let stored = f64::from_bits(self.latency_ns.load(Ordering::Relaxed));
        let next = if rtt > stored {
            rtt
        } else {
            let elapsed = at.saturating_sub(self.updated_ns.load(Ordering::Relaxed)) as f64;
            let weight = decay_weight(elapsed);
            stored * weight + rtt * (1.0 - weight)
        };
        self.latency_ns.store(next.to_bits(), Ordering::Relaxed);
        self.updated_ns.store(at, Ordering::Relaxed);

        let outcome = if failed { 1.0 } else { 0.0 };
        let rate = f64::from_bits(self.error_rate.load(Ordering::Relaxed));
        let rate = rate + ERROR_ALPHA * (outcome - rate);
        self.error_rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The peak-EWMA latency estimate at `now`, decayed since its last update.
    pub fn latency(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.decayed(self.nanos_since_epoch(now)) as u64)
    }

    /// Latency estimate in nanoseconds at `now` (the figure the balancers compare).
    pub fn latency_nanos(&self, now: Instant) -> f64 {
        self.decayed(self.nanos_since_epoch(now))
    }

    /// Recent share of failed requests, 0.0 to 1.0.
    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate.load(Ordering::Relaxed))
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch);
        // u64 arithmetic (584 years of nanoseconds), not `as_nanos`'s u128.
        since
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(since.subsec_nanos()))
    }

    /// The estimate decays towards zero while nothing is heard, so an idle target is tried again.
    fn decayed(&self, at: u64) -> f64 {
        let estimate = f64::from_bits(self.latency_ns.load(Ordering::Relaxed));
        let updated = self.updated_ns.load(Ordering::Relaxed);
        let elapsed = at.saturating_sub(updated) as f64;
        if elapsed == 0.0 {
            return estimate;
        }
        estimate * decay_weight(elapsed)
    }
}

/// `exp(−elapsed / DECAY)`, the weight an estimate keeps after `elapsed` nanoseconds.
///
/// Balancers read decayed estimates on every pick, usually a few milliseconds after the last
/// update, where `x = elapsed / DECAY` is tiny: there five terms of the Taylor series are exact
/// to 10⁻¹⁰ (the first term left out is x⁶/720 with x < 1/16) and cost a fraction of `exp`.
fn decay_weight(elapsed: f64) -> f64 {
    // A multiplication by the constant reciprocal: a division would cost as much as the rest.
    const PER_NANO: f64 = 1.0 / DECAY.as_nanos() as f64;
    let x = elapsed * PER_NANO;
    if x < 1.0 / 16.0 {
        // 1 − x + x²/2 − x³/6 + x⁴/24 − x⁵/120 grouped by powers of x² (Estrin's scheme): three
        // short chains side by side instead of Horner's one chain of ten dependent steps, which
        // was most of a weighted random pick (100 targets: 105–114 → 85–87 ns, docs/benchmarks.md).
        let x2 = x * x;
        let low = 1.0 - x;
        let mid = 0.5 - x * (1.0 / 6.0);
        let high = 1.0 / 24.0 - x * (1.0 / 120.0);
        low + x2 * (mid + x2 * high)
    } else {
        (-x).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decay_weight_is_exp_within_1e_10() {
        let tau = DECAY.as_nanos() as f64;
        for step in 0..2000u32 {
            let elapsed = tau * f64::from(step) / 10_000.0; // 0 .. 0.2 τ, across the switch
            let exact = (-elapsed / tau).exp();
            assert!((decay_weight(elapsed) - exact).abs() < 1e-10, "{elapsed}");
        }
        assert_eq!(decay_weight(0.0), 1.0);
    }

    #[test]
    fn a_slow_answer_raises_the_estimate_at_once_and_fast_ones_lower_it_slowly() {
        let start = Instant::now();
        let load = TargetLoad::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        load.observe(Duration::from_millis(500), false, at(1));
        assert!(load.latency(at(1)) >= Duration::from_millis(499));
        load.observe(Duration::from_millis(10), false, at(2));
        // One millisecond later a fast answer barely moves a peak.
        assert!(load.latency(at(2)) > Duration::from_millis(450));
        // With nothing heard for one decay period the estimate has lost about 63 %.
        let later = load.latency(at(2) + DECAY);
        let later_ms = later.as_secs_f64() * 1000.0;
        assert!(later_ms > 150.0 && later_ms < 200.0, "{later_ms}");
    }

    #[test]
    fn a_fast_failure_makes_a_target_look_slower_not_faster() {
        let now = Instant::now();
        let load = TargetLoad::new(now);
        load.observe(Duration::from_millis(20), false, now);
        let before = load.latency(now);
        load.observe(Duration::from_micros(100), true, now);
        assert!(load.latency(now) >= before * 2, "{:?}", load.latency(now));
    }

    #[test]
    fn in_flight_counts_begun_and_not_ended_requests() {
        let now = Instant::now();
        let load = TargetLoad::new(now);
        load.begin();
        load.begin();
        assert_eq!(load.in_flight(), 2);
        load.end(Duration::from_millis(1), false, now);
        assert_eq!(load.in_flight(), 1);
    }

    #[test]
    fn the_error_rate_follows_recent_outcomes() {
        let now = Instant::now();
        let load = TargetLoad::new(now);
        for _ in 0..100 {
            load.observe(Duration::from_millis(1), true, now);
        }
        assert!(load.error_rate() > 0.99);
        for _ in 0..100 {
            load.observe(Duration::from_millis(1), false, now);
        }
        assert!(load.error_rate() < 0.01);
    }
}
