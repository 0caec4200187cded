//! Cost of one pick per algorithm, for 3 and 100 targets, all eligible.
//!
//! Goal (issue 4): ≤ 100 ns per pick; least response time ≤ 200 ns.
//! Run: `cargo bench -p sekisho-policy --bench balance`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sekisho_policy::balance::{hash_key, Algorithm, Balancer, StaticTargets, TargetLoad};

const ALGORITHMS: [(&str, Algorithm); 7] = [
    ("round_robin", Algorithm::RoundRobin),
    ("weighted_round_robin", Algorithm::WeightedRoundRobin),
    ("least_connections", Algorithm::LeastConnections),
    ("least_response_time", Algorithm::LeastResponseTime),
    ("ip_hash", Algorithm::IpHash),
    ("consistent_hash", Algorithm::ConsistentHash),
    ("weighted_random", Algorithm::WeightedRandom),
];

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for count in [3usize, 100] {
        let now = Instant::now();
        let loads: Vec<TargetLoad> = (0..count).map(|_| TargetLoad::new(now)).collect();
        for (i, load) in loads.iter().enumerate() {
            load.observe(Duration::from_micros(500 + 37 * i as u64), i % 7 == 0, now);
        }
        let weights: Vec<u32> = (0..count).map(|i| 1 + (i % 3) as u32).collect();
        let ids: Vec<String> = (0..count)
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250))
            .collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let pool = StaticTargets::new(&weights, &loads);
        for (name, algorithm) in ALGORITHMS {
            let balancer = Balancer::new(algorithm, &refs, &weights);
            let keys: Vec<u64> = (0..1024u64).map(|k| hash_key(&k.to_le_bytes())).collect();
            let mut next = 0usize;
            group.bench_with_input(BenchmarkId::new(name, count), &count, |b, _| {
                b.iter(|| {
                    next = (next + 1) & 1023;
                    black_box(balancer.pick(&pool, Some(keys[next]), now))
                })
            });
        }
        // The latency figures as a gateway reads them: some time after the last observation,
        // so that every read of an estimate computes its decay (an `exp`).
        let later = now + Duration::from_millis(250);
        for (name, algorithm) in [
            ("least_response_time_decaying", Algorithm::LeastResponseTime),
            ("weighted_random_decaying", Algorithm::WeightedRandom),
        ] {
            let balancer = Balancer::new(algorithm, &refs, &weights);
            group.bench_with_input(BenchmarkId::new(name, count), &count, |b, _| {
                b.iter(|| black_box(balancer.pick(&pool, None, black_box(later))))
            });
        }
        // Smooth weighted round robin off its precomputed period: one target down.
        let down: Vec<usize> = (1..count).collect();
        let degraded = StaticTargets::new(&weights, &loads).with_eligible(&down);
        let balancer = Balancer::new(Algorithm::WeightedRoundRobin, &refs, &weights);
        group.bench_with_input(
            BenchmarkId::new("weighted_round_robin_one_down", count),
            &count,
            |b, _| b.iter(|| black_box(balancer.pick(&degraded, None, now))),
        );
        // Least connections with every target busy (1–4 in flight): no early end, the whole
        // scan. (In the rows above nothing is in flight, and the first target ends the scan.)
        let busy: Vec<TargetLoad> = (0..count).map(|_| TargetLoad::new(now)).collect();
        for (i, load) in busy.iter().enumerate() {
            for _ in 0..=(i * 7 % 4) {
                load.begin();
            }
        }
        let busy_pool = StaticTargets::new(&weights, &busy);
        let balancer = Balancer::new(Algorithm::LeastConnections, &refs, &weights);
        group.bench_with_input(
            BenchmarkId::new("least_connections_busy", count),
            &count,
            |b, _| b.iter(|| black_box(balancer.pick(&busy_pool, None, now))),
        );
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
