#![allow(clippy::unwrap_used)]

use super::*;

const MS: Duration = Duration::from_millis(1);

fn gradient(initial: u32) -> Settings {
    Settings {
        algorithm: Algorithm::Gradient {
            tolerance: 1.5,
            smoothing: 0.2,
        },
        initial_limit: initial,
        min_limit: 4,
        max_limit: 1000,
        window: 100 * MS,
        min_samples: 10,
    }
}

/// Runs `windows` windows of `concurrency` calls each taking `latency`, starting at `*now`:
/// twenty rounds per window, and one more call at the window's end that closes it.
fn drive(
    limit: &Arc<AdaptiveLimit>,
    now: &mut Instant,
    windows: u32,
    concurrency: u32,
    latency: Duration,
    sample: Sample,
) {
    drive_with(limit, now, windows, concurrency, |permit, at| {
        let started = at.checked_sub(latency).unwrap_or(at);
        permit.sample(sample, started, at);
    });
}

/// The rounds of [`drive`], each admitted call ended by `end(permit, now)`.
fn drive_with(
    limit: &Arc<AdaptiveLimit>,
    now: &mut Instant,
    windows: u32,
    concurrency: u32,
    end: impl Fn(&mut Permit, Instant),
) {
    let step = limit.settings().window / 20;
    let round = |now: Instant, calls: u32| {
        let mut permits: Vec<Permit> = (0..calls)
            .filter_map(|_| limit.try_acquire().ok())
            .collect();
        for permit in &mut permits {
            end(permit, now);
        }
    };
    for _ in 0..windows {
        for _ in 0..20 {
            round(*now, concurrency);
            *now += step;
        }
        round(*now, 1);
    }
}

#[test]
fn beyond_the_limit_calls_are_shed_and_counted() {
    let settings = Settings {
        min_limit: 1,
        ..gradient(3)
    };
    let limit = AdaptiveLimit::new(settings, Instant::now());
    let held: Vec<Permit> = (0..3).map(|_| limit.try_acquire().unwrap()).collect();
    assert_eq!(limit.try_acquire().unwrap_err(), Shed { limit: 3 });
    assert_eq!(limit.usage().shed, 1);
    assert_eq!(limit.usage().in_flight, 3);
    drop(held);
    assert_eq!(limit.usage().in_flight, 0);
    assert!(limit.try_acquire().is_ok());
}

#[test]
fn a_full_limit_sheds_early_and_a_free_one_takes_no_place() {
    let settings = Settings {
        min_limit: 1,
        ..gradient(2)
    };
    let limit = AdaptiveLimit::new(settings, Instant::now());
    assert_eq!(limit.shed_if_full(), Ok(()));
    assert_eq!(limit.usage().in_flight, 0, "asking took no place");
    let held: Vec<Permit> = (0..2).map(|_| limit.try_acquire().unwrap()).collect();
    assert_eq!(limit.shed_if_full(), Err(Shed { limit: 2 }));
    assert_eq!(limit.usage().shed, 1, "an early shed is counted");
    assert_eq!(limit.usage().in_flight, 2);
    drop(held);
    assert_eq!(limit.shed_if_full(), Ok(()));
}

#[test]
fn bounds_are_put_in_order() {
    let limit = AdaptiveLimit::new(
        Settings {
            initial_limit: 5000,
            min_limit: 0,
            max_limit: 20,
            ..Settings::default()
        },
        Instant::now(),
    );
    assert_eq!(limit.limit(), 20);
    assert_eq!(limit.settings().min_limit, 1);
}

#[test]
fn a_window_closes_only_with_enough_samples_and_time() {
    let mut now = Instant::now();
    let limit = AdaptiveLimit::new(gradient(50), now);
    // Nine samples, however late: not a window.
    for _ in 0..9 {
        let mut permit = limit.try_acquire().unwrap();
        now += 50 * MS;
        permit.sample(Sample::Success, now - 10 * MS, now);
    }
    assert_eq!(limit.usage().windows, 0);
    let mut permit = limit.try_acquire().unwrap();
    permit.sample(Sample::Success, now - 10 * MS, now);
    assert_eq!(limit.usage().windows, 1);
    assert_eq!(limit.usage().long_latency, 10 * MS);
}

#[test]
fn a_second_sample_of_one_permit_does_not_count() {
    let mut now = Instant::now();
    let limit = AdaptiveLimit::new(gradient(50), now);
    let mut permit = limit.try_acquire().unwrap();
    now += 200 * MS;
    for _ in 0..20 {
        permit.sample(Sample::Success, now - MS, now);
    }
    assert_eq!(limit.usage().windows, 0);
}

#[test]
fn an_application_limited_caller_does_not_grow_the_limit() {
    let mut now = Instant::now();
    let limit = AdaptiveLimit::new(gradient(100), now);
    drive(&limit, &mut now, 50, 10, 5 * MS, Sample::Success);
    assert_eq!(limit.limit(), 100);
    assert!(limit.usage().windows >= 49);
}

#[test]
fn steady_latency_under_full_use_grows_the_limit() {
    let mut now = Instant::now();
    let limit = AdaptiveLimit::new(gradient(20), now);
    // Callers keep the limit full; latency stays flat.
    for _ in 0..30 {
        let full = limit.limit();
        drive(&limit, &mut now, 1, full, 5 * MS, Sample::Success);
    }
    assert!(limit.limit() > 40, "limit {}", limit.limit());
}

#[test]
fn rising_latency_shrinks_the_limit_towards_its_floor_and_it_recovers() {
    let mut now = Instant::now();
    let limit = AdaptiveLimit::new(gradient(100), now);
    drive(&limit, &mut now, 20, 100, 10 * MS, Sample::Success);
    let before = limit.limit();
    assert!(before >= 100);
    // The service slows fiftyfold; callers keep pushing.
    // Each window takes about a tenth off; the √limit queue term holds it a little above the
    // floor (the fixed point of 0.9·L + 0.2·√L is L = 4).
    drive(&limit, &mut now, 7, 200, 500 * MS, Sample::Success);
    assert!(limit.limit() < before * 6 / 10, "limit {}", limit.limit());
    drive(&limit, &mut now, 50, 200, 500 * MS, Sample::Success);
    assert!(limit.limit() <= 8, "limit {}", limit.limit());
    // Back to normal: the limit climbs again.
    for _ in 0..40 {
        drive(&limit, &mut now, 1, 1000, 10 * MS, Sample::Success);
    }
    assert!(limit.limit() > 20, "limit {}", limit.limit());
}

#[test]
fn after_a_slow_period_the_limit_is_back_within_two_seconds() {
    // Healthy at 1 ms with demand for 300 in flight; then 5 s at 50 ms cut the limit to its
    // floor; then the service is healthy again (simulated clock, 100 ms windows).
    let mut now = Instant::now();
    let limit = AdaptiveLimit::new(gradient(200), now);
    drive(&limit, &mut now, 30, 300, MS, Sample::Success);
    let before = limit.limit();
    assert!(before >= 200, "limit {before}");
    drive(&limit, &mut now, 50, 300, 50 * MS, Sample::Success);
    let floor = limit.limit();
    assert!(
        floor <= before / 10,
        "the slow period left the limit at {floor}"
    );
    // 2 s of healthy answers: the limit is back where the demand needs it.
    drive(&limit, &mut now, 20, 300, MS, Sample::Success);
    assert!(
        limit.limit() >= before.min(300),
        "{} two seconds after recovery, {before} before the slow period",
        limit.limit()
    );
}

#[test]
fn recovery_stops_doubling_when_latency_rises_again() {
    // The service is fast only while lightly loaded: back at 1 ms, the limit doubles; at
    // higher concurrency it queues again (10 ms) and the doubling ends at once.
    let mut now = Instant::now();
    let limit = AdaptiveLimit::new(gradient(200), now);
    drive(&limit, &mut now, 30, 300, MS, Sample::Success);
    drive(&limit, &mut now, 50, 300, 50 * MS, Sample::Success);
    let floor = limit.limit();
    drive(&limit, &mut now, 1, 300, MS, Sample::Success);
    let doubled = limit.limit();
    assert!(doubled >= floor * 2 - 1, "{floor} → {doubled}");
    drive(&limit, &mut now, 1, 300, 10 * MS, Sample::Success);
    assert!(
        limit.limit() <= doubled,
        "latency ten times its best still grew the limit: {doubled} → {}",
        limit.limit()
    );
}

#[test]
fn one_gradient_step_follows_the_formula() {
    let mut now = Instant::now();
    let limit = AdaptiveLimit::new(gradient(100), now);
    drive(&limit, &mut now, 1, 100, 10 * MS, Sample::Success);
    // First window: long = short, gradient = 1, limit = 100·0.8 + (100 + 10)·0.2 = 102.
    assert_eq!(limit.limit(), 102);
    // Latency triples: long moves 1/600 of the way, gradient = 1.5·long/30ms.
    drive(&limit, &mut now, 1, 102, 30 * MS, Sample::Success);
    let long = 10_000.0 + (30_000.0 - 10_000.0) / LONG_WINDOWS;
    let gradient = (1.5 * long / 30_000.0_f64).clamp(0.5, 1.0);
    let previous = 102.0_f64;
    let target = previous * gradient + previous.sqrt();
    let expected = previous * 0.8 + target * 0.2;
    // `previous` is the rounded limit; the estimate kept 102 exactly.
    assert_eq!(limit.limit(), expected.round() as u32);
}

#[test]
fn aimd_backs_off_on_drops_and_adds_one_when_busy() {
    let mut now = Instant::now();
    let settings = Settings {
        algorithm: Algorithm::Aimd {
            backoff_ratio: 0.5,
            timeout: 200 * MS,
        },
        initial_limit: 40,
        ..gradient(40)
    };
    let limit = AdaptiveLimit::new(settings, now);
    drive(&limit, &mut now, 1, 40, 10 * MS, Sample::Success);
    assert_eq!(limit.limit(), 41);
    drive(&limit, &mut now, 1, 41, 10 * MS, Sample::Dropped);
    assert_eq!(limit.limit(), 21); // 20.5 rounds up
                                   // A sample slower than the timeout is a drop too.
    drive(&limit, &mut now, 1, 21, 300 * MS, Sample::Success);
    assert_eq!(limit.limit(), 10);
    // Idle windows change nothing.
    drive(&limit, &mut now, 3, 2, 10 * MS, Sample::Success);
    assert_eq!(limit.limit(), 10);
}

#[test]
fn threads_never_exceed_the_limit() {
    let limit = AdaptiveLimit::new(gradient(8), Instant::now());
    let holders = AtomicU32::new(0);
    let most = AtomicU32::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..20_000 {
                    if let Ok(permit) = limit.try_acquire() {
                        let now_held = holders.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now_held, Ordering::SeqCst);
                        holders.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                }
            });
        }
    });
    assert!(most.load(Ordering::SeqCst) <= 8);
    assert_eq!(limit.usage().in_flight, 0);
}

/// Like [`drive`], each call reporting `own_delay` of its `latency` as the caller's own.
fn drive_own(
    limit: &Arc<AdaptiveLimit>,
    now: &mut Instant,
    windows: u32,
    concurrency: u32,
    latency: Duration,
    own_delay: Duration,
) {
    drive_with(limit, now, windows, concurrency, |permit, at| {
        permit.sample_latency(Sample::Success, latency, own_delay, at);
    });
}

#[test]
fn a_saturated_caller_does_not_cut_the_limit_of_a_healthy_service() {
    // The service answers in 1 ms throughout. For 10 s the caller's own event loop adds 19 ms
    // to every call (it is the bottleneck); its demand fills the limit.
    let start = Instant::now();
    let mut now = start;
    let limit = AdaptiveLimit::new(gradient(200), start);
    drive_own(&limit, &mut now, 20, 200, MS, Duration::ZERO);
    let before = limit.limit();
    drive_own(&limit, &mut now, 100, 400, 20 * MS, 19 * MS);
    let saturated = limit.limit();
    assert!(
        saturated >= before,
        "the limit fell from {before} to {saturated} while the service was fine"
    );
    // The same latencies measured without knowing the caller's delay: the limit is cut, which
    // is the collapse this guards against.
    let blind = AdaptiveLimit::new(gradient(200), start);
    let mut blind_now = start;
    drive_own(&blind, &mut blind_now, 20, 200, MS, Duration::ZERO);
    drive_own(&blind, &mut blind_now, 100, 400, 20 * MS, Duration::ZERO);
    assert!(
        blind.limit() < before / 2,
        "without the caller's delay the limit is cut ({} from {before})",
        blind.limit()
    );
    // The overload ends: within 2 s (20 windows) of normal calls the limit is where the
    // saturation left it or higher, not on its way back up from the floor.
    drive_own(&limit, &mut now, 20, 200, MS, Duration::ZERO);
    assert!(
        limit.limit() >= before,
        "{} after recovery, {before} before",
        limit.limit()
    );
}

#[test]
fn a_slow_service_still_cuts_the_limit_when_the_caller_is_not_the_cause() {
    // The service slows from 1 ms to 50 ms; the caller's own delay stays at 1 ms.
    let start = Instant::now();
    let mut now = start;
    let limit = AdaptiveLimit::new(gradient(200), start);
    drive_own(&limit, &mut now, 20, 200, MS, Duration::ZERO);
    let before = limit.limit();
    drive_own(&limit, &mut now, 30, 400, 50 * MS, MS);
    assert!(
        limit.limit() < before / 2,
        "{} after the slowdown, {before} before",
        limit.limit()
    );
}
