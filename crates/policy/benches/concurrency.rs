//! Adaptive concurrency limit: admission + release (what every request pays), admission with a
//! latency sample, a refusal at the limit, and admission + sample from two threads at once.
//!
//! Run: `cargo bench -p sekisho-policy --bench concurrency`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use sekisho_policy::concurrency::{AdaptiveLimit, Sample, Settings};

fn admission(c: &mut Criterion) {
    let epoch = Instant::now();
    let limit = AdaptiveLimit::new(Settings::default(), epoch);
    c.bench_function("concurrency/acquire_release", |b| {
        b.iter(|| drop(black_box(limit.try_acquire())))
    });
    c.bench_function("concurrency/acquire_sample_release", |b| {
        b.iter(|| {
            if let Ok(mut permit) = limit.try_acquire() {
                permit.sample(Sample::Success, epoch, Instant::now());
            }
        })
    });
    let full = AdaptiveLimit::new(
        Settings {
            initial_limit: 1,
            min_limit: 1,
            ..Settings::default()
        },
        epoch,
    );
    let _held = full.try_acquire();
    c.bench_function("concurrency/refused_at_limit", |b| {
        b.iter(|| black_box(full.try_acquire().is_err()))
    });
    c.bench_function("concurrency/acquire_sample_release_2_threads", |b| {
        b.iter_custom(|iterations| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        for _ in 0..iterations {
                            if let Ok(mut permit) = limit.try_acquire() {
                                permit.sample(Sample::Success, epoch, Instant::now());
                            }
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
}

criterion_group!(benches, admission);
criterion_main!(benches);
