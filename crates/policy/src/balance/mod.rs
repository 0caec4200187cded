//! Choosing a target of an upstream for one request.
//!
//! A [`Balancer`] picks among the targets a [`Pool`] says are eligible (healthy, not ejected, in
//! the active priority group), using the effective weights the pool gives (which may ramp up
//! during slow start) and the live figures of each target's [`TargetLoad`]. The pool is
//! borrowed for one pick: the balancer keeps only its own small state (a counter, the current
//! weights of smooth weighted round robin, a hash ring).
//!
//! | algorithm | picks | state | cost |
//! |---|---|---|---|
//! | [`Algorithm::RoundRobin`] | each eligible target in turn | one atomic counter | O(1) |
//! | [`Algorithm::WeightedRoundRobin`] | nginx's smooth weighted round robin | current weights under a mutex | O(n) |
//! | [`Algorithm::LeastConnections`] | fewest requests in flight per unit of weight | none | O(n) |
//! | [`Algorithm::LeastResponseTime`] | lower peak-EWMA cost of two random targets | none | O(1) |
//! | [`Algorithm::IpHash`] | a target from the key's hash, rehashed while ineligible | none | O(1) |
//! | [`Algorithm::ConsistentHash`] | first eligible target clockwise of the key on a ring | the ring | O(log n) |
//! | [`Algorithm::WeightedRandom`] | at random, in proportion to weight × health score | none | O(n) |
//!
//! ```
//! use std::time::Instant;
//! use sekisho_policy::balance::{Algorithm, Balancer, StaticPool, TargetLoad};
//!
//! let now = Instant::now();
//! let loads: Vec<TargetLoad> = (0..3).map(|_| TargetLoad::new(now)).collect();
//! let pool = StaticPool::new(&[1, 1, 1], &loads);
//! let balancer = Balancer::new(Algorithm::RoundRobin, &["a:80", "b:80", "c:80"], &[1, 1, 1]);
//! let picks: Vec<usize> = (0..4).map(|_| balancer.pick(&pool, None, now).unwrap()).collect();
//! assert_eq!(picks, [0, 1, 2, 0]);
//! ```

mod load;

pub use load::TargetLoad;

use std::sync::atomic::{AtomicUsize, Ordering};
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

/// What a balancer may see of an upstream's targets during one pick.
///
/// Targets are numbered `0..len` in config order, and that numbering is the one the
/// [`Balancer`] was built with.
pub trait Pool {
    /// Indices of the targets that may be picked now, ascending.
    fn eligible(&self) -> &[usize];
    /// Whether `target` may be picked now (agrees with [`Pool::eligible`]).
    fn is_eligible(&self, target: usize) -> bool;
    /// Effective weight of `target` now: its configured weight, reduced during slow start.
    /// Never 0 for an eligible target.
    fn weight(&self, target: usize) -> u32;
    /// Live figures of `target`.
    fn load(&self, target: usize) -> &TargetLoad;
}

/// A [`Pool`] over fixed weights and every target eligible; for tests, benches and examples.
#[derive(Debug)]
pub struct StaticPool<'a> {
    weights: &'a [u32],
    loads: &'a [TargetLoad],
    eligible: Vec<usize>,
}

impl<'a> StaticPool<'a> {
    /// Every target eligible with its weight.
    pub fn new(weights: &'a [u32], loads: &'a [TargetLoad]) -> Self {
        Self {
            weights,
            loads,
            eligible: (0..weights.len()).collect(),
        }
    }

    /// Only `eligible` (ascending indices) may be picked.
    pub fn with_eligible(mut self, eligible: &[usize]) -> Self {
        self.eligible = eligible.to_vec();
        self
    }
}

impl Pool for StaticPool<'_> {
    fn eligible(&self) -> &[usize] {
        &self.eligible
    }

    fn is_eligible(&self, target: usize) -> bool {
        self.eligible.binary_search(&target).is_ok()
    }

    fn weight(&self, target: usize) -> u32 {
        self.weights.get(target).copied().unwrap_or(1)
    }

    fn load(&self, target: usize) -> &TargetLoad {
        &self.loads[target]
    }
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
}

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
        let current = if algorithm == Algorithm::WeightedRoundRobin {
            vec![0; ids.len()]
        } else {
            Vec::new()
        };
        Self {
            algorithm,
            turn: AtomicUsize::new(0),
            current: Mutex::new(current),
            weight_sums,
            ring,
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The target for one request, or `None` when no target is eligible. `key` is the request's
    /// key hashed with [`hash_key`] (for `IpHash` and `ConsistentHash`; without one they fall
    /// back to round robin).
    pub fn pick<P: Pool + ?Sized>(
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
            (Algorithm::WeightedRoundRobin, _) => self.smooth_weighted(pool),
            (Algorithm::LeastConnections, _) => Some(self.least_connections(pool)),
            (Algorithm::LeastResponseTime, _) => Some(least_response_time(pool, now)),
            (Algorithm::IpHash, Some(key)) => Some(self.ip_hash(pool, key)),
            (Algorithm::ConsistentHash, Some(key)) => Some(self.ring_lookup(pool, key)),
            (Algorithm::IpHash | Algorithm::ConsistentHash, None) => Some(self.in_turn(eligible)),
            (Algorithm::WeightedRandom, _) => Some(weighted_random(pool, now)),
        }
    }

    fn in_turn(&self, eligible: &[usize]) -> usize {
        eligible[self.turn.fetch_add(1, Ordering::Relaxed) % eligible.len()]
    }

    /// nginx's smooth weighted round robin: every eligible target gains its weight, the
    /// richest is chosen and pays the total back.
    fn smooth_weighted<P: Pool + ?Sized>(&self, pool: &P) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        let mut best_weight = i64::MIN;
        for &target in pool.eligible() {
            let Some(slot) = current.get_mut(target) else {
                continue;
            };
            let weight = i64::from(pool.weight(target));
            *slot += weight;
            total += weight;
            if *slot > best_weight {
                best_weight = *slot;
                best = Some(target);
            }
        }
        let chosen = best?;
        current[chosen] -= total;
        Some(chosen)
    }

    /// Fewest in flight per unit of weight; the scan starts at a rotating place so that ties
    /// are shared in turn.
    fn least_connections<P: Pool + ?Sized>(&self, pool: &P) -> usize {
        let eligible = pool.eligible();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut best = eligible[start % eligible.len()];
        let mut best_load = u64::from(pool.load(best).in_flight());
        let mut best_weight = u64::from(pool.weight(best).max(1));
        for offset in 1..eligible.len() {
            let target = eligible[(start + offset) % eligible.len()];
            let load = u64::from(pool.load(target).in_flight());
            let weight = u64::from(pool.weight(target).max(1));
            // load / weight < best_load / best_weight, without division.
            if load * best_weight < best_load * weight {
                best = target;
                best_load = load;
                best_weight = weight;
            }
        }
        best
    }

    /// The key's place among all targets by weight; a place whose target is out is rehashed,
    /// so the keys of eligible targets never move.
    fn ip_hash<P: Pool + ?Sized>(&self, pool: &P, key: u64) -> usize {
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
    fn ring_lookup<P: Pool + ?Sized>(&self, pool: &P, key: u64) -> usize {
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

/// Power of two choices over the peak-EWMA cost: two distinct random eligible targets, the
/// cheaper wins.
fn least_response_time<P: Pool + ?Sized>(pool: &P, now: Instant) -> usize {
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

/// Health score of a target among peers whose mean latency is `reference` (nanoseconds):
/// `2 × (1 − error rate)² × reference / (reference + latency)`, so a target like its peers
/// scores 1, and at least [`MIN_SCORE`] so that a poor target still gets the odd probe.
fn health_score(load: &TargetLoad, reference: f64, now: Instant) -> f64 {
    let success = 1.0 - load.error_rate().clamp(0.0, 1.0);
    let latency = load.latency_nanos(now);
    let speed = if reference + latency > 0.0 {
        2.0 * reference / (reference + latency)
    } else {
        1.0
    };
    (success * success * speed).max(MIN_SCORE)
}

/// Floor of the health score.
const MIN_SCORE: f64 = 0.05;

/// Random, in proportion to weight × health score.
fn weighted_random<P: Pool + ?Sized>(pool: &P, now: Instant) -> usize {
    let eligible = pool.eligible();
    let reference = eligible
        .iter()
        .map(|&t| pool.load(t).latency_nanos(now))
        .sum::<f64>()
        / eligible.len() as f64;
    let share = |target: usize| {
        f64::from(pool.weight(target)) * health_score(pool.load(target), reference, now)
    };
    let total: f64 = eligible.iter().map(|&t| share(t)).sum();
    let mut point = fastrand::f64() * total;
    for &target in eligible {
        point -= share(target);
        if point < 0.0 {
            return target;
        }
    }
    eligible[eligible.len() - 1]
}

/// One step of SplitMix64: a cheap, well-mixed rehash.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
