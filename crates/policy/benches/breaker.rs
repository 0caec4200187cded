//! Circuit breaker: one permit + record, uncontended and with two threads at once.
//!
//! Goal (issue 5): ≤ 50 ns uncontended. Run: `cargo bench -p sekisho-policy --bench breaker`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sekisho_policy::breaker::{Breaker, BreakerConfig, Outcome, Window};

fn permit_and_record(c: &mut Criterion) {
    let now = Instant::now();
    for (name, window) in [
        ("count_100", Window::Calls(100)),
        ("time_60s", Window::Time(60)),
    ] {
        let breaker = Breaker::new_at(
            BreakerConfig {
                window,
                ..BreakerConfig::default()
            },
            now,
        );
        let outcome = Outcome {
            failed: false,
            duration: Duration::from_millis(3),
        };
        c.bench_function(&format!("breaker/{name}/uncontended"), |b| {
            b.iter(|| {
                if let Ok(permit) = breaker.try_acquire(black_box(now)) {
                    breaker.record(permit, outcome, now);
                }
            })
        });
        let shared = Arc::new(Breaker::new_at(
            BreakerConfig {
                window,
                ..BreakerConfig::default()
            },
            now,
        ));
        c.bench_function(&format!("breaker/{name}/two_threads"), |b| {
            b.iter_custom(|iterations| {
                let other = Arc::clone(&shared);
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let stop_other = Arc::clone(&stop);
                let contender = std::thread::spawn(move || {
                    while !stop_other.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Ok(permit) = other.try_acquire(now) {
                            other.record(permit, outcome, now);
                        }
                    }
                });
                let start = Instant::now();
                for _ in 0..iterations {
                    if let Ok(permit) = shared.try_acquire(black_box(now)) {
                        shared.record(permit, outcome, now);
                    }
                }
                let elapsed = start.elapsed();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = contender.join();
                elapsed
            })
        });
    }
}

criterion_group!(benches, permit_and_record);
criterion_main!(benches);
