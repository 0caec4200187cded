//! Bulkhead: acquire + release of a free slot (the path every admitted request takes), and a
//! refusal when full.
//!
//! Run: `cargo bench -p sekisho-policy --bench bulkhead`.
// A benchmark, not a request path: a setup that fails may panic.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sekisho_policy::bulkhead::Bulkhead;

fn acquire_release(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let bulkhead = Bulkhead::new(64, 8, Duration::from_millis(50));
    c.bench_function("bulkhead/acquire_release", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    drop(black_box(bulkhead.acquire().await));
                }
                start.elapsed()
            })
        })
    });
    let full = Bulkhead::new(1, 0, Duration::ZERO);
    let _held = runtime.block_on(full.acquire());
    c.bench_function("bulkhead/refused_when_full", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    black_box(full.acquire().await.is_err());
                }
                start.elapsed()
            })
        })
    });
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
