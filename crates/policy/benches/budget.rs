//! Retry budget: the deposit every request on a retrying route makes, the check a retry makes
//! (granted and refused), and backoff computation.
//!
//! Run: `cargo bench -p sekisho-policy --bench budget`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sekisho_policy::backoff::{Backoff, Jitter};
use sekisho_policy::budget::RetryBudget;

fn budget(c: &mut Criterion) {
    let start = Instant::now();
    let open = RetryBudget::new(0.2, 10, Duration::from_secs(10), start);
    c.bench_function("budget/deposit", |b| {
        b.iter(|| open.deposit(black_box(start)))
    });
    // A budget that always has room: a deposit and a granted withdrawal.
    c.bench_function("budget/deposit_withdraw_granted", |b| {
        b.iter(|| {
            open.deposit(start);
            open.deposit(start);
            open.deposit(start);
            open.deposit(start);
            open.deposit(start);
            black_box(open.withdraw(black_box(start)))
        })
    });
    let spent = RetryBudget::new(0.0, 0, Duration::from_secs(10), start);
    c.bench_function("budget/withdraw_refused", |b| {
        b.iter(|| black_box(spent.withdraw(black_box(start))))
    });
    let backoff = Backoff::new(
        Duration::from_millis(50),
        Duration::from_secs(1),
        Jitter::Full,
    );
    c.bench_function("backoff/delay_full_jitter", |b| {
        b.iter(|| backoff.delay(black_box(3), Duration::ZERO, black_box(0.37)))
    });
}

criterion_group!(benches, budget);
criterion_main!(benches);
