//! Choosing a target of an upstream for one request.
//!
//! A [`Balancer`] picks among the targets a [`TargetSet`] says are eligible (healthy, not ejected, in
//! the active priority group), using the effective weights the pool gives (which may ramp up
//! during slow start) and the live figures of each target's [`TargetLoad`]. The pool is
//! borrowed for one pick: the balancer keeps only its own small state (a counter, the current
//! weights of smooth weighted round robin, a hash ring).
//!
//! | algorithm | picks | state | cost |
//! |---|---|---|---|
//! | [`Algorithm::RoundRobin`] | each eligible target in turn | one atomic counter | O(1) |
//! | [`Algorithm::WeightedRoundRobin`] | nginx's smooth weighted round robin | current weights under a mutex; one precomputed period | O(1) steady, O(n) otherwise |
//! | [`Algorithm::LeastConnections`] | fewest requests in flight per unit of weight | none | O(n) |
//! | [`Algorithm::LeastResponseTime`] | lower peak-EWMA cost of two random targets | none | O(1) |
//! | [`Algorithm::IpHash`] | a target from the key's hash, rehashed while ineligible | prefix sums of the weights | O(log n) |
//! | [`Algorithm::ConsistentHash`] | first eligible target clockwise of the key on a ring | the ring | O(log n) |
//! | [`Algorithm::WeightedRandom`] | at random, in proportion to weight × health score | the mean latency, recomputed now and then | O(1) expected |
//!
//! Smooth weighted round robin updates the current weights of the eligible targets only: a
//! target that is out keeps the current weight it had (it neither gains nor pays while out),
//! and when it returns it resumes from there, as in nginx. While every target is eligible with
//! its configured weight ([`TargetSet::weights_as_configured`]) a pick follows a precomputed period
//! of the sequence (lock-free) instead of the current weights; the two agree in proportions
//! and smoothness, not in phase, when the pool moves between them.
//!
//! Weighted random gives each eligible target `t` the probability
//! `weight(t) × score(t) / Σ weight × score`, with the health score
//!
//! ```text
//! score(t) = clamp(2 × (1 − error_rate(t))² × ref / (ref + latency(t)), 0.05, 2)
//! ```
//!
//! where `latency(t)` is the target's peak-EWMA estimate and `ref` the mean latency of the
//! eligible targets: a target like its peers scores 1, one twice as slow as the mean about
//! 0.67, one failing half its requests 0.25, and the floor 0.05 keeps the odd probe going to a
//! poor target so that it can show it has recovered. It samples by rejection: draw an eligible
//! target uniformly, keep it with probability `weight ÷ max weight` (an integer draw, no
//! latency read), then with probability `score ÷ 2`; after 64 draws, the best drawn. `ref` is
//! recomputed over the eligible targets by about one pick in max(256, 4 × targets), chosen at
//! random: no other pick scans the pool or writes shared state.
//!
//! ```
//! use std::time::Instant;
//! use sekisho_policy::balance::{Algorithm, Balancer, StaticTargets, TargetLoad};
//!
//! let now = Instant::now();
//! let loads: Vec<TargetLoad> = (0..3).map(|_| TargetLoad::new(now)).collect();
//! let pool = StaticTargets::new(&[1, 1, 1], &loads);
//! let balancer = Balancer::new(Algorithm::RoundRobin, &["a:80", "b:80", "c:80"], &[1, 1, 1]);
//! let picks: Vec<usize> = (0..4).map(|_| balancer.pick(&pool, None, now).unwrap()).collect();
//! assert_eq!(picks, [0, 1, 2, 0]);
//! ```

mod load;
mod random;
mod targets;

pub use load::{TargetLoad, DECAY, DEFAULT_RTT};
use random::least_response_time;
pub use targets::{StaticTargets, TargetSet};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The algorithms, as `balance` in the config names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Each eligible target in turn; weights are ignored.
    RoundRobin,
    /// Smooth weighted round robin, the interleaving nginx uses: with weights 5, 1, 1 the
    /// sequence is a a b a c a a, never runs of one target longer than needed.
    WeightedRoundRobin,
    /// The target with the fewest requests in flight relative to its weight; ties broken in turn.
    LeastConnections,
    /// Peak-EWMA latency × (in flight + 1) / weight, lower of two random eligible targets
    /// (power of two choices, as Finagle and Linkerd do).
    LeastResponseTime,
    /// The key (the client IP) hashed over all targets by weight; an ineligible choice is
    /// rehashed, so only the keys of a target that is down move.
    IpHash,
    /// A ring of virtual nodes (ketama-style, stable across processes); the first eligible
    /// target clockwise of the key's hash. Adding or removing one of N targets moves ≈1/N keys.
    ConsistentHash,
    /// Random, in proportion to weight × health score (recent error rate and latency).
    WeightedRandom,
}

/// Least connections over every target (`0..factors.len()`, the usual case), the start's key
/// already read and not 0: the first target from `start`, in the scan's order, whose key
/// `in_flight × factor` is the smallest.
///
/// Two passes, because keeping the index beside the running minimum puts a compare-and-move
/// pair on one chain of dependent steps for every target: first the smallest key alone, in four
/// independent lanes (one multiply and one `min` per target, nothing that depends on the
/// previous target), ending early once a lane reaches 0; then the first target with that key
/// from the start, which is usually near. Over 100 busy targets: 117 → 87 ns (one session,
/// docs/benchmarks.md); blocks of sixteen between the checks for 0 measured the same.
fn least_key_all_eligible<P: TargetSet + ?Sized>(
    pool: &P,
    factors: &[u32],
    start: usize,
    start_key: u64,
) -> usize {
    let key =
        |target: usize, factor: u32| u64::from(pool.load(target).in_flight()) * u64::from(factor);
    let mut lanes = [u64::MAX; 4];
    let mut quads = factors.chunks_exact(4);
    let mut target = 0;
    for quad in &mut quads {
        for (lane, &factor) in lanes.iter_mut().zip(quad) {
            *lane = (*lane).min(key(target, factor));
            target += 1;
        }
        // Nothing can beat a target with nothing in flight: stop looking for the minimum.
        if lanes.contains(&0) {
            break;
        }
    }
    if !lanes.contains(&0) {
        for &factor in quads.remainder() {
            lanes[0] = lanes[0].min(key(target, factor));
            target += 1;
        }
    }
    let least = lanes.into_iter().min().unwrap_or(u64::MAX);
    if start_key <= least {
        return start;
    }
    let n = factors.len();
    (start + 1..n)
        .chain(0..start)
        .find(|&t| key(t, factors[t]) <= least)
        .unwrap_or(start)
}

/// The stable 64-bit hash used for request keys and ring points (XXH3), the same in every
/// process and on every machine, so that instances side by side send a key to the same target.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Picks targets for one upstream with one algorithm.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    /// Turn counter of round robin, and of the fallbacks and tie-breaks of the others.
    turn: AtomicUsize,
    /// Current weights of smooth weighted round robin, one per target.
    current: Mutex<Vec<i64>>,
    /// Prefix sums of the configured weights (ip_hash): target i owns `[sums[i-1], sums[i])`.
    weight_sums: Vec<u64>,
    /// Virtual nodes of consistent hashing, sorted by point.
    ring: Vec<(u64, u32)>,
    /// Configured weights (smooth weighted round robin).
    configured: Vec<u32>,
    /// Smooth weighted round robin's sequence over one period (the sum of the weights), when
    /// that is short enough to keep: the steady state then costs one counter increment.
    period: Vec<u32>,
    /// Smooth weighted round robin's period for the last eligible set a pool identified
    /// ([`TargetSet::set_id`]), when it is not the steady one: a degraded pool is O(1) too.
    degraded: std::sync::RwLock<(u64, Vec<u32>)>,
    /// Weighted random: mean latency of the eligible targets (nanoseconds, f64 bits) as last
    /// computed, the reference a target's latency is scored against; NaN until computed.
    reference_latency: AtomicU64,
    /// Least connections: `lcm(weights) / weight` per target, so that comparing
    /// `in_flight × factor` compares `in_flight / weight` exactly; empty when the common multiple
    /// is too large (the scan then multiplies both sides).
    lc_factors: Vec<u32>,
}

/// Largest common multiple of the weights for which least connections keeps factors.
const MAX_LC_MULTIPLE: u64 = 1 << 24;

/// Virtual nodes per unit of weight on the consistent-hash ring (ketama's figure).
const VNODES_PER_WEIGHT: u64 = 160;
/// Upper bound of the ring's size; weights are scaled down beyond it.
const MAX_RING_POINTS: u64 = 200_000;
/// Rehashes of an ip_hash key whose target is not eligible, before falling back to turns.
const IP_HASH_TRIES: usize = 20;

impl Balancer {
    /// A balancer for targets identified by `ids` (their addresses: they place the ring's virtual
    /// nodes) with configured `weights`; both in config order.
    pub fn new(algorithm: Algorithm, ids: &[&str], weights: &[u32]) -> Self {
        let weight = |i: usize| u64::from(weights.get(i).copied().unwrap_or(1).max(1));
        let weight_sums = if algorithm == Algorithm::IpHash {
            (0..ids.len())
                .scan(0u64, |sum, i| {
                    *sum += weight(i);
                    Some(*sum)
                })
                .collect()
        } else {
            Vec::new()
        };
        let ring = if algorithm == Algorithm::ConsistentHash {
            let total: u64 = (0..ids.len()).map(weight).sum::<u64>() * VNODES_PER_WEIGHT;
            let scale = if total > MAX_RING_POINTS {
                MAX_RING_POINTS as f64 / total as f64
            } else {
                1.0
            };
            let mut ring = Vec::new();
            for (index, id) in ids.iter().enumerate() {
                let points = ((weight(index) * VNODES_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
                for vnode in 0..points {
                    ring.push((hash_key(format!("{id}#{vnode}").as_bytes()), index as u32));
                }
            }
            ring.sort_unstable();
            ring
        } else {
            Vec::new()
        };
        let (current, configured, period) = if algorithm == Algorithm::WeightedRoundRobin {
            let configured: Vec<u32> = (0..ids.len()).map(|i| weight(i) as u32).collect();
            (
                vec![0; ids.len()],
                configured.clone(),
                smooth_period(&configured),
            )
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
        let lc_factors = if algorithm == Algorithm::LeastConnections {
            let multiple = (0..ids.len()).try_fold(1u64, |lcm, i| {
                let w = weight(i);
                let next = lcm / gcd(lcm, w) * w;
                (next <= MAX_LC_MULTIPLE).then_some(next)
            });
            match multiple {
                Some(lcm) => (0..ids.len()).map(|i| (lcm / weight(i)) as u32).collect(),
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        Self {
            lc_factors,
            algorithm,
            turn: AtomicUsize::new(0),
            current: Mutex::new(current),
            weight_sums,
            ring,
            configured,
            period,
            degraded: std::sync::RwLock::new((0, Vec::new())),
            // Not known yet: the first weighted random pick computes it.
            reference_latency: AtomicU64::new(f64::NAN.to_bits()),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The target for one request, or `None` when no target is eligible. `key` is the request's
    /// key hashed with [`hash_key`] (for `IpHash` and `ConsistentHash`; without one they fall
    /// back to round robin).
    pub fn pick<P: TargetSet + ?Sized>(
        &self,
        pool: &P,
        key: Option<u64>,
        now: Instant,
    ) -> Option<usize> {
        let eligible = pool.eligible();
        match eligible.len() {
            0 => return None,
            1 => {
                // Only one choice; the hash and ring algorithms still agree with it.
                return Some(eligible[0]);
            }
            _ => {}
        }
        match (self.algorithm, key) {
            (Algorithm::RoundRobin, _) => Some(self.in_turn(eligible)),
            (Algorithm::WeightedRoundRobin, _) => self
                .smooth_weighted(pool)
                .or_else(|| Some(self.in_turn(eligible))),
            (Algorithm::LeastConnections, _) => Some(self.least_connections(pool)),
            (Algorithm::LeastResponseTime, _) => Some(least_response_time(pool, now)),
            (Algorithm::IpHash, Some(key)) => Some(self.ip_hash(pool, key)),
            (Algorithm::ConsistentHash, Some(key)) => Some(self.ring_lookup(pool, key)),
            (Algorithm::IpHash | Algorithm::ConsistentHash, None) => Some(self.in_turn(eligible)),
            (Algorithm::WeightedRandom, _) => Some(self.weighted_random(pool, now)),
        }
    }

    fn in_turn(&self, eligible: &[usize]) -> usize {
        eligible[self.turn.fetch_add(1, Ordering::Relaxed) % eligible.len()]
    }

    /// nginx's smooth weighted round robin: every eligible target gains its weight, the
    /// richest is chosen and pays the total back; targets that are out are left as they are
    /// (see the module docs). `None` only when no eligible target is one the balancer was
    /// built with.
    fn smooth_weighted<P: TargetSet + ?Sized>(&self, pool: &P) -> Option<usize> {
        if !self.period.is_empty() && self.steady(pool) {
            let step = self.turn.fetch_add(1, Ordering::Relaxed) % self.period.len();
            return Some(self.period[step] as usize);
        }
        if let Some(target) = self.degraded_period(pool) {
            return Some(target);
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let current = current.as_mut_slice();
        let mut total = 0i64;
        let mut best = usize::MAX;
        let mut best_weight = i64::MIN;
        for &target in pool.eligible() {
            let Some(slot) = current.get_mut(target) else {
                continue;
            };
            let weight = i64::from(pool.weight(target));
            let value = *slot + weight;
            *slot = value;
            total += weight;
            // Branch-free running maximum (the first of equals wins, as in nginx).
            let better = value > best_weight;
            best = if better { target } else { best };
            best_weight = if better { value } else { best_weight };
        }
        let slot = current.get_mut(best)?;
        *slot -= total;
        Some(best)
    }

    /// The next target of the period of the pool's eligible set, computed once per set the
    /// pool identifies; `None` when it gives no id or the period would be too long.
    fn degraded_period<P: TargetSet + ?Sized>(&self, pool: &P) -> Option<usize> {
        let id = pool.set_id();
        if id == 0 {
            return None;
        }
        {
            let cached = self.degraded.read().unwrap_or_else(|p| p.into_inner());
            if cached.0 == id {
                if cached.1.is_empty() {
                    return None;
                }
                let step = self.turn.fetch_add(1, Ordering::Relaxed) % cached.1.len();
                return Some(cached.1[step] as usize);
            }
        }
        let eligible = pool.eligible();
        let weights: Vec<u32> = eligible.iter().map(|&t| pool.weight(t).max(1)).collect();
        // Weights are u32, so their greatest common divisor is too.
        let divisor = weights.iter().map(|&w| u64::from(w)).fold(0, gcd).max(1) as u32;
        let reduced: Vec<u32> = weights.iter().map(|w| w / divisor).collect();
        let period: Vec<u32> = smooth_period(&reduced)
            .into_iter()
            .filter_map(|i| eligible.get(i as usize).map(|&t| t as u32))
            .collect();
        let next = if period.is_empty() {
            None
        } else {
            let step = self.turn.fetch_add(1, Ordering::Relaxed) % period.len();
            Some(period[step] as usize)
        };
        *self.degraded.write().unwrap_or_else(|p| p.into_inner()) = (id, period);
        next
    }

    /// Whether the pool is in its steady state: every target eligible with its configured
    /// weight (nothing down, nothing ramping). Smooth weighted round robin then follows its
    /// precomputed period instead of scanning.
    fn steady<P: TargetSet + ?Sized>(&self, pool: &P) -> bool {
        pool.eligible().len() == self.configured.len() && pool.weights_as_configured()
    }

    /// Fewest in flight per unit of weight; the scan starts at a rotating place so that ties
    /// are shared in turn.
    fn least_connections<P: TargetSet + ?Sized>(&self, pool: &P) -> usize {
        let eligible = pool.eligible();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % eligible.len();
        if pool.weights_as_configured() && !self.lc_factors.is_empty() {
            return self.least_connections_keyed(pool, eligible, start);
        }
        let mut best = eligible[start];
        let mut best_load = u64::from(pool.load(best).in_flight());
        let mut best_weight = u64::from(pool.weight(best).max(1));
        let mut consider = |target: usize| {
            let load = u64::from(pool.load(target).in_flight());
            let weight = u64::from(pool.weight(target).max(1));
            // load / weight < best_load / best_weight, without division.
            if load * best_weight < best_load * weight {
                best = target;
                best_load = load;
                best_weight = weight;
            }
        };
        // From the rotating start to the end, then from the beginning: no division per step.
        for &target in &eligible[start + 1..] {
            consider(target);
        }
        for &target in &eligible[..start] {
            consider(target);
        }
        best
    }

    /// Least connections with the configured weights: one key per target, `in_flight × factor`,
    /// the first smallest from the rotating start; the multiplication stays off the chain of
    /// comparisons, and a target with nothing in flight ends the scan (nothing can beat it, and
    /// it is the first of its ties in the scan's order, as the full scan would choose).
    fn least_connections_keyed<P: TargetSet + ?Sized>(
        &self,
        pool: &P,
        eligible: &[usize],
        start: usize,
    ) -> usize {
        let factors = &self.lc_factors;
        let key = |target: usize| {
            u64::from(pool.load(target).in_flight())
                * u64::from(factors.get(target).copied().unwrap_or(1))
        };
        let mut best = eligible[start];
        let mut best_key = key(best);
        if best_key == 0 {
            return best;
        }
        // Two targets at a time: the smaller of a pair (the first on a tie) is found apart from
        // the running best, so the chain of dependent comparisons is half as long (measured:
        // 140 → 116 ns over 100 busy targets; four at a time gains nothing more).
        let mut consider = |target: usize, candidate: u64| -> bool {
            if candidate < best_key {
                best = target;
                best_key = candidate;
            }
            best_key == 0
        };
        if eligible.len() == factors.len() {
            return least_key_all_eligible(pool, factors, start, best_key);
        }
        for part in [&eligible[start + 1..], &eligible[..start]] {
            let mut pairs = part.chunks_exact(2);
            for pair in &mut pairs {
                let (a, b) = (pair[0], pair[1]);
                let (ka, kb) = (key(a), key(b));
                let (target, candidate) = if kb < ka { (b, kb) } else { (a, ka) };
                if consider(target, candidate) {
                    return best;
                }
            }
            for &target in pairs.remainder() {
                if consider(target, key(target)) {
                    return best;
                }
            }
        }
        best
    }

    /// The key's place among all targets by weight; a place whose target is out is rehashed,
    /// so the keys of eligible targets never move.
    fn ip_hash<P: TargetSet + ?Sized>(&self, pool: &P, key: u64) -> usize {
        let Some(&total) = self.weight_sums.last() else {
            return self.in_turn(pool.eligible());
        };
        let mut hash = key;
        for _ in 0..IP_HASH_TRIES {
            let place = hash % total;
            let target = self.weight_sums.partition_point(|&sum| sum <= place);
            if pool.is_eligible(target) {
                return target;
            }
            hash = splitmix64(hash);
        }
        self.in_turn(pool.eligible())
    }

    /// The first eligible target clockwise of the key on the ring.
    fn ring_lookup<P: TargetSet + ?Sized>(&self, pool: &P, key: u64) -> usize {
        if self.ring.is_empty() {
            return self.in_turn(pool.eligible());
        }
        let start = self.ring.partition_point(|&(point, _)| point < key);
        for step in 0..self.ring.len() {
            let (_, target) = self.ring[(start + step) % self.ring.len()];
            if pool.is_eligible(target as usize) {
                return target as usize;
            }
        }
        self.in_turn(pool.eligible())
    }
}

/// Longest smooth weighted round robin period kept precomputed.
const MAX_PERIOD: u64 = 4096;

/// One period of smooth weighted round robin over `weights` (after sum-of-weights steps every
/// current weight is back to zero, so the sequence repeats); empty when it would be too long.
fn smooth_period(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 || total > MAX_PERIOD {
        return Vec::new();
    }
    let mut current = vec![0i64; weights.len()];
    let mut period = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (index, &weight) in weights.iter().enumerate() {
            current[index] += i64::from(weight);
            if current[index] > current[best] {
                best = index;
            }
        }
        current[best] -= total as i64;
        period.push(best as u32);
    }
    period
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One step of SplitMix64: a cheap, well-mixed rehash.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
