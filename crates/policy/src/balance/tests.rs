#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::random::{accepts, health_score};
use super::*;

fn loads(count: usize, now: Instant) -> Vec<TargetLoad> {
    (0..count).map(|_| TargetLoad::new(now)).collect()
}

fn ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("10.0.0.{i}:8080")).collect()
}

fn balancer(algorithm: Algorithm, weights: &[u32]) -> Balancer {
    let ids = ids(weights.len());
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    Balancer::new(algorithm, &refs, weights)
}

fn tally(picks: impl Iterator<Item = usize>, targets: usize) -> Vec<usize> {
    let mut counts = vec![0; targets];
    for pick in picks {
        counts[pick] += 1;
    }
    counts
}

#[test]
fn round_robin_takes_each_eligible_target_in_turn() {
    let now = Instant::now();
    let loads = loads(4, now);
    let pool = StaticTargets::new(&[1, 1, 1, 1], &loads).with_eligible(&[0, 2, 3]);
    let rr = balancer(Algorithm::RoundRobin, &[1, 1, 1, 1]);
    let picks: Vec<usize> = (0..6).map(|_| rr.pick(&pool, None, now).unwrap()).collect();
    assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
}

#[test]
fn smooth_weighted_round_robin_gives_nginx_sequence() {
    let now = Instant::now();
    let loads = loads(3, now);
    let weights = [5, 1, 1];
    let pool = StaticTargets::new(&weights, &loads);
    let wrr = balancer(Algorithm::WeightedRoundRobin, &weights);
    let picks: Vec<usize> = (0..14)
        .map(|_| wrr.pick(&pool, None, now).unwrap())
        .collect();
    assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn smooth_weighted_round_robin_shares_exactly_by_weight() {
    let now = Instant::now();
    let loads = loads(3, now);
    let weights = [1, 2, 3];
    let pool = StaticTargets::new(&weights, &loads);
    let wrr = balancer(Algorithm::WeightedRoundRobin, &weights);
    let counts = tally((0..600).map(|_| wrr.pick(&pool, None, now).unwrap()), 3);
    assert_eq!(counts, [100, 200, 300]);
    // Never more than the heavy target's fair run: no target twice in a row when weights are
    // within a factor of two of the others' sum.
    let picks: Vec<usize> = (0..6)
        .map(|_| wrr.pick(&pool, None, now).unwrap())
        .collect();
    assert!(
        picks.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{picks:?}"
    );
}

#[test]
fn least_connections_prefers_fewer_in_flight_per_weight_and_shares_ties() {
    let now = Instant::now();
    let loads = loads(3, now);
    let pool = StaticTargets::new(&[1, 1, 2], &loads);
    let lc = balancer(Algorithm::LeastConnections, &[1, 1, 2]);
    // Ties (nothing in flight) are shared in turn.
    let counts = tally((0..300).map(|_| lc.pick(&pool, None, now).unwrap()), 3);
    assert_eq!(counts, [100, 100, 100]);
    // 2 in flight on 0, 1 on 1, 2 on 2 (weight 2: 1 per unit): 1 and 2 tie, 0 never wins.
    for _ in 0..2 {
        loads[0].begin();
        loads[2].begin();
    }
    loads[1].begin();
    let counts = tally((0..100).map(|_| lc.pick(&pool, None, now).unwrap()), 3);
    assert_eq!(counts[0], 0, "{counts:?}");
    assert_eq!(counts[1] + counts[2], 100);
    loads[1].begin();
    assert_eq!(lc.pick(&pool, None, now), Some(2));
}

#[test]
fn least_response_time_prefers_the_fast_target_and_spreads_over_equals() {
    let now = Instant::now();
    let loads = loads(3, now);
    let pool = StaticTargets::new(&[1, 1, 1], &loads);
    let lrt = balancer(Algorithm::LeastResponseTime, &[1, 1, 1]);
    let equal = tally((0..3000).map(|_| lrt.pick(&pool, None, now).unwrap()), 3);
    assert!(equal.iter().all(|&c| (800..1200).contains(&c)), "{equal:?}");
    loads[0].observe(Duration::from_millis(10), false, now);
    loads[1].observe(Duration::from_millis(100), false, now);
    loads[2].observe(Duration::from_millis(100), false, now);
    let skewed = tally((0..3000).map(|_| lrt.pick(&pool, None, now).unwrap()), 3);
    // Target 0 wins every draw it is in: 2 of the 3 pairs.
    assert!(skewed[0] > 1800, "{skewed:?}");
    // In flight counts too: enough requests on the fast target make it the costly one.
    for _ in 0..20 {
        loads[0].begin();
    }
    assert_ne!(
        lrt.pick(
            &StaticTargets::new(&[1, 1, 1], &loads).with_eligible(&[0, 1]),
            None,
            now
        ),
        Some(0)
    );
}

#[test]
fn hashing_spreads_keys_by_weight() {
    let now = Instant::now();
    let loads = loads(3, now);
    let weights = [1, 2, 3];
    let pool = StaticTargets::new(&weights, &loads);
    for algorithm in [Algorithm::IpHash, Algorithm::ConsistentHash] {
        let b = balancer(algorithm, &weights);
        let counts = tally(
            (0..60_000u64).map(|k| {
                b.pick(&pool, Some(hash_key(&k.to_le_bytes())), now)
                    .unwrap()
            }),
            3,
        );
        for (index, &count) in counts.iter().enumerate() {
            let expected = 10_000.0 * f64::from(weights[index]);
            let error = (count as f64 - expected).abs() / expected;
            assert!(error < 0.15, "{algorithm:?}: {counts:?}");
        }
    }
}

fn ring_assignment(count: usize, keys: &[u64]) -> Vec<String> {
    let now = Instant::now();
    let loads = loads(count, now);
    let weights = vec![1; count];
    let pool = StaticTargets::new(&weights, &loads);
    let ids = ids(count);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let ring = Balancer::new(Algorithm::ConsistentHash, &refs, &weights);
    keys.iter()
        .map(|&k| ids[ring.pick(&pool, Some(k), now).unwrap()].clone())
        .collect()
}

#[test]
fn consistent_hash_moves_about_one_nth_of_keys_and_only_to_or_from_the_changed_target() {
    let keys: Vec<u64> = (0..100_000u64)
        .map(|k| hash_key(&k.to_le_bytes()))
        .collect();
    let ten = ring_assignment(10, &keys);
    let eleven = ring_assignment(11, &keys);
    let added = ids(11)[10].clone();
    let moved: Vec<usize> = (0..keys.len()).filter(|&i| ten[i] != eleven[i]).collect();
    let share = moved.len() as f64 / keys.len() as f64;
    assert!((0.8 / 11.0..1.25 / 11.0).contains(&share), "moved {share}");
    assert!(
        moved.iter().all(|&i| eleven[i] == added),
        "a key moved between old targets"
    );

    // Removing target 9 (ids are in order, so ten without its last is nine).
    let nine = ring_assignment(9, &keys);
    let removed = ids(10)[9].clone();
    let moved: Vec<usize> = (0..keys.len()).filter(|&i| ten[i] != nine[i]).collect();
    let share = moved.len() as f64 / keys.len() as f64;
    assert!((0.8 / 10.0..1.25 / 10.0).contains(&share), "moved {share}");
    assert!(
        moved.iter().all(|&i| ten[i] == removed),
        "a key of a kept target moved"
    );
}

#[test]
fn an_ineligible_target_moves_only_its_own_keys() {
    let now = Instant::now();
    let loads = loads(5, now);
    let weights = [1, 1, 2, 1, 1];
    let keys: Vec<u64> = (0..20_000u64).map(|k| hash_key(&k.to_le_bytes())).collect();
    for algorithm in [Algorithm::IpHash, Algorithm::ConsistentHash] {
        let b = balancer(algorithm, &weights);
        let all = StaticTargets::new(&weights, &loads);
        let without_2 = StaticTargets::new(&weights, &loads).with_eligible(&[0, 1, 3, 4]);
        let mut moved = 0;
        for &key in &keys {
            let before = b.pick(&all, Some(key), now).unwrap();
            let after = b.pick(&without_2, Some(key), now).unwrap();
            if before != after {
                assert_eq!(before, 2, "{algorithm:?}: a key of target {before} moved");
                moved += 1;
            }
        }
        assert!(moved > 0);
    }
}

#[test]
fn weighted_random_follows_weights_and_shies_away_from_errors() {
    let now = Instant::now();
    let loads = loads(3, now);
    let weights = [1, 1, 2];
    let pool = StaticTargets::new(&weights, &loads);
    let wr = balancer(Algorithm::WeightedRandom, &weights);
    let healthy = tally((0..8000).map(|_| wr.pick(&pool, None, now).unwrap()), 3);
    assert!((1700..2300).contains(&healthy[0]), "{healthy:?}");
    assert!((3600..4400).contains(&healthy[2]), "{healthy:?}");
    for _ in 0..100 {
        loads[2].observe(Duration::from_millis(30), true, now);
    }
    let failing = tally((0..8000).map(|_| wr.pick(&pool, None, now).unwrap()), 3);
    assert!(failing[2] < 800, "{failing:?}");
    assert!(
        failing[2] > 0,
        "a failing target still gets the odd probe: {failing:?}"
    );
}

#[test]
fn hash_algorithms_without_a_key_take_turns() {
    let now = Instant::now();
    let loads = loads(3, now);
    let pool = StaticTargets::new(&[1, 1, 1], &loads);
    for algorithm in [Algorithm::IpHash, Algorithm::ConsistentHash] {
        let b = balancer(algorithm, &[1, 1, 1]);
        let picks: Vec<usize> = (0..3).map(|_| b.pick(&pool, None, now).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2], "{algorithm:?}");
    }
}

const ALL: [Algorithm; 7] = [
    Algorithm::RoundRobin,
    Algorithm::WeightedRoundRobin,
    Algorithm::LeastConnections,
    Algorithm::LeastResponseTime,
    Algorithm::IpHash,
    Algorithm::ConsistentHash,
    Algorithm::WeightedRandom,
];

proptest! {
    #[test]
    fn a_pick_is_always_eligible_and_none_only_when_nothing_is(
        weights in proptest::collection::vec(1u32..10, 1..12),
        mask in proptest::collection::vec(any::<bool>(), 12),
        keys in proptest::collection::vec(any::<u64>(), 1..20),
        in_flight in proptest::collection::vec(0u32..5, 12),
    ) {
        let now = Instant::now();
        let loads = loads(weights.len(), now);
        for (load, &n) in loads.iter().zip(&in_flight) {
            for _ in 0..n {
                load.begin();
            }
        }
        let eligible: Vec<usize> = (0..weights.len()).filter(|&i| mask[i]).collect();
        let pool = StaticTargets::new(&weights, &loads).with_eligible(&eligible);
        for algorithm in ALL {
            let b = balancer(algorithm, &weights);
            for &key in &keys {
                let picked = b.pick(&pool, Some(key), now);
                match picked {
                    Some(target) => prop_assert!(eligible.contains(&target), "{:?} picked {}", algorithm, target),
                    None => prop_assert!(eligible.is_empty()),
                }
            }
        }
    }
}

/// A pool whose weights may be ramping: the balancers must not use what they precomputed from
/// the configured weights.
struct Ramping<'a>(StaticTargets<'a>);

impl TargetSet for Ramping<'_> {
    fn eligible(&self) -> &[usize] {
        self.0.eligible()
    }
    fn is_eligible(&self, target: usize) -> bool {
        self.0.is_eligible(target)
    }
    fn weight(&self, target: usize) -> u32 {
        self.0.weight(target)
    }
    fn load(&self, target: usize) -> &TargetLoad {
        self.0.load(target)
    }
}

#[test]
fn nothing_eligible_picks_none() {
    let now = Instant::now();
    let loads = loads(3, now);
    let pool = StaticTargets::new(&[1, 2, 3], &loads).with_eligible(&[]);
    for algorithm in ALL {
        let b = balancer(algorithm, &[1, 2, 3]);
        assert_eq!(b.pick(&pool, None, now), None, "{algorithm:?}");
        assert_eq!(b.pick(&pool, Some(42), now), None, "{algorithm:?}");
        assert_eq!(b.pick(&Ramping(pool_ref(&pool)), Some(42), now), None);
    }
}

fn pool_ref<'a>(pool: &StaticTargets<'a>) -> StaticTargets<'a> {
    StaticTargets::new(pool.weights, pool.loads).with_eligible(pool.eligible())
}

#[test]
fn a_balancer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Balancer>();
}

#[test]
fn smooth_weighted_round_robin_scanning_gives_the_same_sequence() {
    let now = Instant::now();
    let loads = loads(3, now);
    let weights = [5, 1, 1];
    let pool = Ramping(StaticTargets::new(&weights, &loads));
    let wrr = balancer(Algorithm::WeightedRoundRobin, &weights);
    let picks: Vec<usize> = (0..14)
        .map(|_| wrr.pick(&pool, None, now).unwrap())
        .collect();
    assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn smooth_weighted_round_robin_does_not_credit_a_target_while_it_is_out() {
    let now = Instant::now();
    let loads = loads(3, now);
    let weights = [1, 1, 1];
    let wrr = balancer(Algorithm::WeightedRoundRobin, &weights);
    let without_0 = Ramping(StaticTargets::new(&weights, &loads).with_eligible(&[1, 2]));
    let picks = tally(
        (0..100).map(|_| wrr.pick(&without_0, None, now).unwrap()),
        3,
    );
    assert_eq!(picks, [0, 50, 50]);
    // Back: target 0 resumes at its old current weight, and takes its turn, not a burst.
    let all = Ramping(StaticTargets::new(&weights, &loads));
    for _ in 0..10 {
        let round = tally((0..3).map(|_| wrr.pick(&all, None, now).unwrap()), 3);
        assert_eq!(round, [1, 1, 1]);
    }
}

#[test]
fn smooth_weighted_round_robin_is_exact_across_threads() {
    let now = Instant::now();
    let loads = loads(3, now);
    let weights = [1, 2, 3];
    for steady in [true, false] {
        let wrr = balancer(Algorithm::WeightedRoundRobin, &weights);
        let counts: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let pool = StaticTargets::new(&weights, &loads);
                        let picks = (0..600).map(|_| {
                            if steady {
                                wrr.pick(&pool, None, now).unwrap()
                            } else {
                                wrr.pick(&Ramping(pool_ref(&pool)), None, now).unwrap()
                            }
                        });
                        tally(picks, 3)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: Vec<usize> = (0..3).map(|t| counts.iter().map(|c| c[t]).sum()).collect();
        assert_eq!(total, [400, 800, 1200], "steady: {steady}");
    }
}

#[test]
fn least_connections_with_ramping_weights_still_prefers_fewer_per_weight() {
    let now = Instant::now();
    let loads = loads(3, now);
    let weights = [1, 1, 2];
    let lc = balancer(Algorithm::LeastConnections, &weights);
    let pool = Ramping(StaticTargets::new(&weights, &loads));
    let counts = tally((0..300).map(|_| lc.pick(&pool, None, now).unwrap()), 3);
    assert_eq!(counts, [100, 100, 100]);
    for _ in 0..3 {
        loads[0].begin();
        loads[1].begin();
        loads[2].begin();
    }
    loads[2].begin();
    // 3/1, 3/1, 4/2: target 2 has the fewest per unit of weight.
    assert_eq!(lc.pick(&pool, None, now), Some(2));
}

#[test]
fn least_response_time_sends_nearly_everything_to_the_faster_of_two() {
    let now = Instant::now();
    let loads = loads(2, now);
    let pool = StaticTargets::new(&[1, 1], &loads);
    let lrt = balancer(Algorithm::LeastResponseTime, &[1, 1]);
    loads[0].observe(Duration::from_millis(100), false, now);
    loads[1].observe(Duration::from_millis(10), false, now);
    let later = now + Duration::from_millis(5);
    let counts = tally((0..1000).map(|_| lrt.pick(&pool, None, later).unwrap()), 2);
    assert!(counts[1] >= 800, "{counts:?}");
}

#[test]
fn weighted_random_shifts_away_from_a_slow_target() {
    let now = Instant::now();
    let loads = loads(3, now);
    let weights = [1, 1, 1];
    let pool = StaticTargets::new(&weights, &loads);
    let wr = balancer(Algorithm::WeightedRandom, &weights);
    loads[0].observe(Duration::from_millis(30), false, now);
    loads[1].observe(Duration::from_millis(30), false, now);
    loads[2].observe(Duration::from_millis(300), false, now);
    // Let the reference settle on the mean latency (120 ms) first.
    for _ in 0..2000 {
        wr.pick(&pool, None, now);
    }
    // Scores 2·120/150 = 1.6, 1.6 and 2·120/420 ≈ 0.57: the slow target gets ≈ 15 %.
    let counts = tally((0..9000).map(|_| wr.pick(&pool, None, now).unwrap()), 3);
    assert!((900..1800).contains(&counts[2]), "{counts:?}");
    assert!((3300..4500).contains(&counts[0]), "{counts:?}");
}

#[test]
fn a_degraded_pool_that_says_what_it_is_follows_its_own_period() {
    let now = Instant::now();
    let loads = loads(4, now);
    let weights = [5, 1, 1, 1];
    let wrr = balancer(Algorithm::WeightedRoundRobin, &weights);
    // Target 3 is out: the other three keep nginx's interleaving of 5, 1, 1, exactly.
    let pool = StaticTargets::new(&weights, &loads).with_eligible(&[0, 1, 2]);
    assert_ne!(pool.set_id(), 0);
    let picks: Vec<usize> = (0..14)
        .map(|_| wrr.pick(&pool, None, now).unwrap())
        .collect();
    assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    // Another set, another period.
    let pool = StaticTargets::new(&weights, &loads).with_eligible(&[1, 2, 3]);
    let counts = tally((0..30).map(|_| wrr.pick(&pool, None, now).unwrap()), 4);
    assert_eq!(counts, [0, 10, 10, 10]);
}

proptest! {
    /// The division-free acceptance of weighted random decides as the health score does.
    #[test]
    fn acceptance_agrees_with_the_health_score(
        d in 0.0f64..2.0,
        error_rate in 0.0f64..1.0,
        latency in 0.0f64..1e9,
        reference in 0.0f64..1e9,
    ) {
        let score = health_score(error_rate, latency, reference);
        prop_assume!((d - score).abs() > 1e-9);
        prop_assert_eq!(accepts(d, error_rate, latency, reference), d < score);
    }
}

proptest! {
    /// Least connections picks, pick after pick, the first target from the rotating start
    /// with the fewest in flight per unit of weight — with the factors of the configured weights
    /// and without them (a pool whose weights ramp).
    #[test]
    fn least_connections_picks_the_first_least_loaded_from_the_rotation(
        targets in proptest::collection::vec((1u32..7, 0u32..5), 1..40),
        picks in 1usize..40,
        busy in any::<bool>(),
    ) {
        let now = Instant::now();
        let weights: Vec<u32> = targets.iter().map(|&(w, _)| w).collect();
        let loads = loads(weights.len(), now);
        // Half the cases have every target busy: no target with nothing in flight ends a scan.
        for (load, &(_, in_flight)) in loads.iter().zip(&targets) {
            for _ in 0..in_flight + u32::from(busy) {
                load.begin();
            }
        }
        // The reference: from the rotation's start, the first with the fewest in flight per
        // unit of weight among `eligible`.
        let expected = |eligible: &[usize], pick: usize| {
            let start = pick % eligible.len();
            let mut best = eligible[start];
            for step in 1..eligible.len() {
                let t = eligible[(start + step) % eligible.len()];
                let (a, b) = (u64::from(loads[t].in_flight()), u64::from(weights[t]));
                let (c, d) = (u64::from(loads[best].in_flight()), u64::from(weights[best]));
                if a * d < c * b {
                    best = t;
                }
            }
            best
        };
        let all: Vec<usize> = (0..weights.len()).collect();
        let configured = StaticTargets::new(&weights, &loads);
        let keyed = balancer(Algorithm::LeastConnections, &weights);
        let ramping = Ramping(StaticTargets::new(&weights, &loads));
        let scanned = balancer(Algorithm::LeastConnections, &weights);
        for pick in 0..picks {
            prop_assert_eq!(keyed.pick(&configured, None, now), Some(expected(&all, pick)));
            prop_assert_eq!(scanned.pick(&ramping, None, now), Some(expected(&all, pick)));
        }
        // Some targets out: the keyed scan over `eligible` agrees with the reference over it.
        let eligible: Vec<usize> = all.iter().copied().filter(|t| t % 3 != 1).collect();
        let partial = StaticTargets::new(&weights, &loads).with_eligible(&eligible);
        let subset = balancer(Algorithm::LeastConnections, &weights);
        for pick in 0..picks {
            prop_assert_eq!(subset.pick(&partial, None, now), Some(expected(&eligible, pick)));
        }
    }
}
