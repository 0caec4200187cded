//! The two algorithms that pick at random: least response time (power of two choices over the
//! peak-EWMA cost) and weighted random (in proportion to weight × health score).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Balancer, TargetSet};

/// Power of two choices over the peak-EWMA cost: two distinct random eligible targets, the
/// cheaper wins.
pub(super) fn least_response_time<P: TargetSet + ?Sized>(pool: &P, now: Instant) -> usize {
    let eligible = pool.eligible();
    let first = fastrand::usize(..eligible.len());
    let mut second = fastrand::usize(..eligible.len() - 1);
    if second >= first {
        second += 1;
    }
    let cost = |target: usize| {
        let load = pool.load(target);
        load.latency_nanos(now) * f64::from(load.in_flight() + 1)
            / f64::from(pool.weight(target).max(1))
    };
    let (a, b) = (eligible[first], eligible[second]);
    if cost(b) < cost(a) {
        b
    } else {
        a
    }
}

/// Health score of a target whose peers answer in `reference` nanoseconds on average:
/// `2 × (1 − error rate)² × reference / (reference + latency)`, between [`MIN_SCORE`] and 2. A
/// target like its peers scores 1; the floor keeps the odd probe going to a poor target.
pub(super) fn health_score(error_rate: f64, latency: f64, reference: f64) -> f64 {
    let success = 1.0 - error_rate.clamp(0.0, 1.0);
    let speed = if reference + latency > 0.0 {
        2.0 * reference / (reference + latency)
    } else {
        1.0
    };
    (success * success * speed).clamp(MIN_SCORE, MAX_SCORE)
}

/// Whether a draw `d` in `[0, MAX_SCORE)` falls under the health score, i.e.
/// `d < health_score(error_rate, latency, reference)`, without its division: the score's
/// ceiling is never reached (the speed factor stays below 2), and under its floor the draw
/// passes by `d < MIN_SCORE` alone.
pub(super) fn accepts(d: f64, error_rate: f64, latency: f64, reference: f64) -> bool {
    if d < MIN_SCORE {
        return true;
    }
    let success = 1.0 - error_rate.clamp(0.0, 1.0);
    let total = reference + latency;
    if total > 0.0 {
        d * total < success * success * 2.0 * reference
    } else {
        d < success * success
    }
}

/// Floor of the health score.
const MIN_SCORE: f64 = 0.05;
/// Ceiling of the health score (a target infinitely faster than its peers).
const MAX_SCORE: f64 = 2.0;
/// Draws of weighted random before it settles for the best-scored target drawn.
const RANDOM_TRIES: usize = 64;
/// Fewest picks, on average, between two computations of weighted random's reference latency.
const REFERENCE_REFRESH: usize = 256;

impl Balancer {
    /// Random in proportion to weight × health score, by rejection (see the `balance` module docs): draw
    /// an eligible target uniformly, keep it with probability weight ÷ max weight (an integer
    /// draw, no latency read), then with probability score ÷ [`MAX_SCORE`]. O(1) expected:
    /// about max/mean weight draws and two latency reads per pick; after [`RANDOM_TRIES`]
    /// draws, the best-scored target that passed the weight test.
    pub(super) fn weighted_random<P: TargetSet + ?Sized>(&self, pool: &P, now: Instant) -> usize {
        let eligible = pool.eligible();
        let max_weight = pool.max_weight().max(1);
        // One access to the thread's generator per pick, not three per draw.
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        let reference = self.reference_latency(pool, now, &mut rng);
        let draws = rng.u64(..);
        let mut rng = fastrand::Rng::with_seed(draws);
        for _ in 0..RANDOM_TRIES {
            let target = eligible[rng.usize(..eligible.len())];
            if rng.u32(..max_weight) >= pool.weight(target) {
                continue;
            }
            let load = pool.load(target);
            if accepts(
                rng.f64() * MAX_SCORE,
                load.error_rate(),
                load.latency_nanos(now),
                reference,
            ) {
                return target;
            }
        }
        // Every draw refused (rare: all scores near the floor): the same draws again from the
        // same seed, now scoring those that passed the weight test — the scores' divisions are
        // paid only here, not by every refused draw. This loop must draw as the one above does,
        // call for call (a closure shared by both measured 10 % slower, docs/benchmarks.md).
        let mut rng = fastrand::Rng::with_seed(draws);
        // If no draw passes the weight test (only with extreme weights): a uniform choice.
        let mut best = (eligible[draws as usize % eligible.len()], -1.0);
        for _ in 0..RANDOM_TRIES {
            let target = eligible[rng.usize(..eligible.len())];
            let weight = pool.weight(target);
            if rng.u32(..max_weight) >= weight {
                continue;
            }
            let _ = rng.f64();
            let load = pool.load(target);
            let score = health_score(load.error_rate(), load.latency_nanos(now), reference);
            let share = f64::from(weight) * score;
            if share > best.1 {
                best = (target, share);
            }
        }
        best.0
    }

    /// Weighted random's reference: the mean latency of the eligible targets, recomputed by
    /// about one pick in max(256, 4 × targets) (chosen at random, so no shared counter), so
    /// that its O(n) pass costs at most a quarter of a latency read per pick.
    fn reference_latency<P: TargetSet + ?Sized>(
        &self,
        pool: &P,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> f64 {
        let eligible = pool.eligible();
        let cached = f64::from_bits(self.reference_latency.load(Ordering::Relaxed));
        let refresh = (4 * eligible.len()).max(REFERENCE_REFRESH);
        if !cached.is_nan() && rng.usize(..refresh) != 0 {
            return cached;
        }
        let total: f64 = eligible
            .iter()
            .map(|&target| pool.load(target).latency_nanos(now))
            .sum();
        let mean = total / eligible.len().max(1) as f64;
        self.reference_latency
            .store(mean.to_bits(), Ordering::Relaxed);
        mean
    }
}
