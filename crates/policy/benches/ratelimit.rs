//! Local rate-limit decisions, each algorithm, against the `governor` crate in the same run:
//! one key (a per-route limit), 10 000 keys in turn (a per-client limit), and two threads on one
//! key (contention). Every decision here reads the clock, as the gateway's do.
//!
//! Run: `cargo bench -p sekisho-policy --bench ratelimit`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use governor::{Quota, RateLimiter};
use sekisho_policy::ratelimit::{Limit, LocalLimiter};

const KEYS: usize = 10_000;

fn limits() -> Vec<(&'static str, Limit)> {
    let window = Duration::from_secs(1);
    vec![
        (
            "token_bucket",
            Limit::TokenBucket {
                capacity: 1_000_000_000,
                refill_per_second: 1e9,
            },
        ),
        (
            "gcra",
            Limit::Gcra {
                burst: 1_000_000_000,
                per_second: 1e9,
            },
        ),
        (
            "fixed_window",
            Limit::FixedWindow {
                limit: u64::MAX / 2,
                window,
            },
        ),
        // The log keeps an entry per admitted request: a limit the benchmark reaches, so most
        // decisions here are refusals (which trim the log as admissions do).
        (
            "sliding_window_log",
            Limit::SlidingWindowLog {
                limit: 10_000,
                window,
            },
        ),
        (
            "sliding_window_counter",
            Limit::SlidingWindowCounter {
                limit: u64::MAX / 2,
                window,
            },
        ),
    ]
}

fn now(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect()
}

fn local(c: &mut Criterion) {
    let epoch = Instant::now();
    let keys = keys();
    for (name, limit) in limits() {
        let limiter = LocalLimiter::new(limit, 100_000);
        c.bench_function(&format!("ratelimit/{name}/one_key"), |b| {
            b.iter(|| black_box(limiter.decide(black_box("10.0.0.1"), now(epoch), 1)))
        });
        // The gateway passes the instant it read when the request arrived: no clock read here.
        let fresh = LocalLimiter::new(limit, 100_000);
        let mut t = 0u64;
        c.bench_function(&format!("ratelimit/{name}/one_key_caller_clock"), |b| {
            b.iter(|| {
                t += 100;
                black_box(fresh.decide(black_box("10.0.0.1"), t, 1))
            })
        });
        let mut i = 0;
        c.bench_function(&format!("ratelimit/{name}/10k_keys"), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(limiter.decide(&keys[i], now(epoch), 1))
            })
        });
    }
}

fn governor(c: &mut Criterion) {
    let quota = Quota::per_second(NonZeroU32::MAX);
    let direct = RateLimiter::direct(quota);
    c.bench_function("governor/direct", |b| b.iter(|| black_box(direct.check())));
    let keyed = RateLimiter::<String, _, _>::keyed(quota);
    let one = "10.0.0.1".to_owned();
    c.bench_function("governor/keyed/one_key", |b| {
        b.iter(|| black_box(keyed.check_key(black_box(&one))))
    });
    let keys = keys();
    let mut i = 0;
    c.bench_function("governor/keyed/10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(keyed.check_key(&keys[i]))
        })
    });
}

/// Both threads decide on one key: the worst case for a sharded map.
fn contention(c: &mut Criterion) {
    let epoch = Instant::now();
    let ours = Arc::new(LocalLimiter::new(limits()[0].1, 100_000));
    c.bench_function("ratelimit/token_bucket/one_key_2_threads", |b| {
        b.iter_custom(|iterations| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    let ours = Arc::clone(&ours);
                    scope.spawn(move || {
                        for _ in 0..iterations {
                            black_box(ours.decide("10.0.0.1", now(epoch), 1));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    let theirs = Arc::new(RateLimiter::<String, _, _>::keyed(Quota::per_second(
        NonZeroU32::MAX,
    )));
    let key = "10.0.0.1".to_owned();
    c.bench_function("governor/keyed/one_key_2_threads", |b| {
        b.iter_custom(|iterations| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    let theirs = Arc::clone(&theirs);
                    let key = &key;
                    scope.spawn(move || {
                        for _ in 0..iterations {
                            let _ = black_box(theirs.check_key(key));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
}

criterion_group!(benches, local, governor, contention);
criterion_main!(benches);
