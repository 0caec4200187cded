//! sekisho-store against a real Redis: `redis://127.0.0.1:6379` unless `SEKISHO_TEST_REDIS_URL`
//! says otherwise.
//!
//! Every test works under its own random key prefix (tests run in parallel and can be run again)
//! and deletes its keys when it ends, even by a panic. Where real time must pass — Redis's clock
//! decides, not Tokio's — the tests sleep, briefly.

// The helpers outside the #[test] functions fail their test as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sekisho_policy::ratelimit::{Decision, Limit};
use sekisho_store::instances::{Presence, PresenceConfig};
use sekisho_store::ratelimit::RedisLimiter;
use sekisho_store::StoreError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_millis(500);

fn url() -> String {
    std::env::var("SEKISHO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A prefix no other test, and no earlier run, uses.
fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "sekisho:test:{}:{nanos:x}:{}:rl:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn conn() -> ConnectionManager {
    sekisho_store::connect(&url())
        .await
        .expect("Redis at SEKISHO_TEST_REDIS_URL or redis://127.0.0.1:6379")
}

/// Deletes the keys it was given when dropped (also when the test panics).
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        if let Ok(mut conn) = redis::Client::open(url()).and_then(|c| c.get_connection()) {
            let _: Result<u64, _> = redis::cmd("DEL").arg(&self.0).query(&mut conn);
        }
    }
}

/// A limiter under a fresh prefix, and the cleanup of `keys` under it for `limits`.
async fn limiter(limits: &[Limit], keys: &[&str]) -> (RedisLimiter, Cleanup) {
    let limiter = RedisLimiter::new(conn().await, unique_prefix(), TIMEOUT);
    let cleanup = Cleanup(
        limits
            .iter()
            .flat_map(|l| keys.iter().map(|k| limiter.redis_key(l, k)))
            .collect(),
    );
    (limiter, cleanup)
}

async fn redis_now(conn: &mut ConnectionManager) -> Duration {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

/// Sleeps until `offset` after the start of the next window of Redis's clock.
async fn align(conn: &mut ConnectionManager, window: Duration, offset: Duration) {
    let now = redis_now(conn).await.as_micros();
    let w = window.as_micros();
    let next = now - now % w + w + offset.as_micros();
    tokio::time::sleep(Duration::from_micros((next - now) as u64)).await;
}

async fn decide(l: &RedisLimiter, limit: &Limit, key: &str, cost: u64) -> Decision {
    l.decide(limit, key, cost).await.expect("decision")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Burst, refusal, countdown and refill shared by the token bucket and GCRA (5 per second: one
/// unit every 200 ms, burst 5).
async fn bucket_semantics(limit: Limit) {
    let (l, _cleanup) = limiter(&[limit], &["k"]).await;
    for expected in (0..5).rev() {
        let d = decide(&l, &limit, "k", 1).await;
        assert!(d.allowed, "{limit:?}: burst of 5, got {d:?}");
        assert_eq!(d.remaining, expected, "{limit:?}: {d:?}");
        assert_eq!(d.limit, 5);
        assert_eq!(d.retry_after, Duration::ZERO);
    }
    let refused = decide(&l, &limit, "k", 1).await;
    assert!(
        !refused.allowed,
        "{limit:?}: 6th of a burst of 5: {refused:?}"
    );
    assert_eq!(refused.remaining, 0);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= ms(200),
        "{limit:?}: one unit every 200 ms: {refused:?}"
    );
    assert!(
        refused.reset > ms(700) && refused.reset <= ms(1000),
        "{limit:?}: full again after ≈ 5 × 200 ms: {refused:?}"
    );
    // Refusals take nothing: a request of 3 needs three units' time.
    let big = decide(&l, &limit, "k", 3).await;
    assert!(!big.allowed);
    assert!(
        big.retry_after > ms(400) && big.retry_after <= ms(600),
        "{limit:?}: {big:?}"
    );
    // Waiting out retry_after lets exactly one more through.
    tokio::time::sleep(refused.retry_after).await;
    let again = decide(&l, &limit, "k", 1).await;
    assert!(again.allowed, "{limit:?}: after retry_after: {again:?}");
    // A cost above the quota never passes.
    let never = decide(&l, &limit, "k", 6).await;
    assert!(!never.allowed);
    assert_eq!(never.retry_after, never.reset);
}

#[tokio::test]
async fn token_bucket_burst_refusal_and_refill() {
    bucket_semantics(Limit::TokenBucket {
        capacity: 5,
        refill_per_second: 5.0,
    })
    .await;
}

#[tokio::test]
async fn gcra_burst_refusal_and_refill() {
    bucket_semantics(Limit::Gcra {
        burst: 5,
        per_second: 5.0,
    })
    .await;
}

#[tokio::test]
async fn gcra_admits_as_the_token_bucket_does() {
    // Same parameters, same sequence of costs, no time to refill in between: same answers.
    let tb = Limit::TokenBucket {
        capacity: 10,
        refill_per_second: 1e-6,
    };
    let gcra = Limit::Gcra {
        burst: 10,
        per_second: 1e-6,
    };
    let (l, _cleanup) = limiter(&[tb, gcra], &["k"]).await;
    for cost in [3, 4, 4, 2, 1, 1, 0, 5] {
        let a = decide(&l, &tb, "k", cost).await;
        let b = decide(&l, &gcra, "k", cost).await;
        assert_eq!(
            (a.allowed, a.remaining),
            (b.allowed, b.remaining),
            "cost {cost}"
        );
    }
}

#[tokio::test]
async fn fixed_window_counts_per_aligned_window() {
    let window = ms(500);
    let limit = Limit::FixedWindow { limit: 3, window };
    let (l, _cleanup) = limiter(&[limit], &["k"]).await;
    let mut c = conn().await;
    align(&mut c, window, ms(5)).await;
    for expected in [2, 1, 0] {
        let d = decide(&l, &limit, "k", 1).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, expected);
        assert!(d.reset <= ms(495), "reset is the end of the window: {d:?}");
    }
    let refused = decide(&l, &limit, "k", 1).await;
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= ms(495));
    assert_eq!(refused.retry_after, refused.reset);
    tokio::time::sleep(refused.retry_after).await;
    let next = decide(&l, &limit, "k", 2).await;
    assert!(next.allowed, "a new window: {next:?}");
    assert_eq!(next.remaining, 1);
}

#[tokio::test]
async fn sliding_log_is_exact_over_any_window() {
    let window = ms(600);
    let limit = Limit::SlidingWindowLog { limit: 3, window };
    let (l, _cleanup) = limiter(&[limit], &["k"]).await;
    let first = decide(&l, &limit, "k", 1).await;
    assert!(first.allowed);
    assert_eq!(first.remaining, 2);
    assert!(first.reset > ms(550) && first.reset <= window);
    tokio::time::sleep(ms(200)).await;
    let second = decide(&l, &limit, "k", 2).await;
    assert!(second.allowed);
    assert_eq!(second.remaining, 0);
    let refused = decide(&l, &limit, "k", 1).await;
    assert!(!refused.allowed);
    // The first unit leaves the window first: 600 ms after it was admitted.
    assert!(
        refused.retry_after > ms(250) && refused.retry_after <= ms(400),
        "{refused:?}"
    );
    // Two units must wait for the second request's units too.
    let two = decide(&l, &limit, "k", 2).await;
    assert!(!two.allowed);
    assert!(
        two.retry_after > ms(450) && two.retry_after <= window,
        "{two:?}"
    );
    tokio::time::sleep(refused.retry_after).await;
    let third = decide(&l, &limit, "k", 1).await;
    assert!(third.allowed, "the first unit left the window: {third:?}");
    assert_eq!(
        third.remaining, 0,
        "the second request's two units are still in"
    );
    assert!(!decide(&l, &limit, "k", 1).await.allowed);
    // One member per admitted unit, expired members trimmed.
    let members = log_members(&l, &limit, "k").await;
    assert_eq!(members, 3);
}

/// Members of the sorted set of a sliding-log key: one per admitted unit.
async fn log_members(l: &RedisLimiter, limit: &Limit, key: &str) -> u64 {
    let mut c = conn().await;
    redis::cmd("ZCARD")
        .arg(l.redis_key(limit, key))
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn sliding_log_takes_costs_above_one_zadd() {
    let limit = Limit::SlidingWindowLog {
        limit: 3000,
        window: Duration::from_secs(60),
    };
    let (l, _cleanup) = limiter(&[limit], &["k"]).await;
    let d = decide(&l, &limit, "k", 2500).await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 500);
    let refused = decide(&l, &limit, "k", 501).await;
    assert!(!refused.allowed);
    assert!(refused.retry_after > Duration::from_secs(59), "{refused:?}");
    assert!(decide(&l, &limit, "k", 500).await.allowed);
    let members = log_members(&l, &limit, "k").await;
    assert_eq!(members, 3000);
}

#[tokio::test]
async fn sliding_counter_weighs_the_previous_window() {
    let window = ms(400);
    let limit = Limit::SlidingWindowCounter { limit: 10, window };
    let (l, _cleanup) = limiter(&[limit], &["k"]).await;
    let mut c = conn().await;
    align(&mut c, window, ms(5)).await;
    for expected in (0..10).rev() {
        let d = decide(&l, &limit, "k", 1).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, expected);
    }
    let refused = decide(&l, &limit, "k", 1).await;
    assert!(!refused.allowed);
    // Next window: 10 × (1 − e/400 ms) + 1 ≤ 10 from e = 40 ms on.
    let to_next = window - ms(5);
    assert!(
        refused.retry_after > to_next + ms(40) - ms(100) && refused.retry_after <= to_next + ms(40),
        "{refused:?}"
    );
    assert!(
        refused.reset > window && refused.reset <= 2 * window,
        "{refused:?}"
    );
    tokio::time::sleep(refused.retry_after + ms(1)).await;
    let next = decide(&l, &limit, "k", 1).await;
    assert!(next.allowed, "previous window weighed down: {next:?}");
    // Just after: 10 × (1 − e/W) + 1 + 1 > 10 for e < 80 ms.
    let after = decide(&l, &limit, "k", 1).await;
    assert!(!after.allowed, "{after:?}");
    assert!(after.retry_after > Duration::ZERO);
}

#[tokio::test]
async fn zero_cost_is_answered_and_takes_nothing() {
    let limits = [
        Limit::TokenBucket {
            capacity: 2,
            refill_per_second: 1e-6,
        },
        Limit::Gcra {
            burst: 2,
            per_second: 1e-6,
        },
        Limit::FixedWindow {
            limit: 2,
            window: Duration::from_secs(3600),
        },
        Limit::SlidingWindowLog {
            limit: 2,
            window: Duration::from_secs(3600),
        },
        Limit::SlidingWindowCounter {
            limit: 2,
            window: Duration::from_secs(3600),
        },
    ];
    let (l, _cleanup) = limiter(&limits, &["k"]).await;
    for limit in &limits {
        let d = decide(&l, limit, "k", 0).await;
        assert!(d.allowed, "{limit:?}");
        assert_eq!(d.remaining, 2, "{limit:?}");
        assert_eq!(decide(&l, limit, "k", 2).await.remaining, 0, "{limit:?}");
    }
}

/// Two connection managers (two gateway processes), 8 tasks each, 1008 decisions on one key with
/// a quota of 300 that does not refill during the test: exactly 300 pass, and each saw a
/// different `remaining` (no two decisions read the same state).
async fn exactly_300_of_1008(limit: Limit) {
    let prefix = unique_prefix();
    let a = RedisLimiter::new(conn().await, prefix.clone(), TIMEOUT);
    let b = RedisLimiter::new(conn().await, prefix, TIMEOUT);
    let _cleanup = Cleanup(vec![a.redis_key(&limit, "shared")]);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut remaining = Vec::new();
            for _ in 0..63 {
                let d = l.decide(&limit, "shared", 1).await.expect("decision");
                if d.allowed {
                    remaining.push(d.remaining);
                }
            }
            remaining
        }));
    }
    let mut admitted = Vec::new();
    for t in tasks {
        admitted.extend(t.await.unwrap());
    }
    assert_eq!(admitted.len(), 300, "{limit:?}");
    admitted.sort_unstable();
    assert_eq!(admitted, (0..300).collect::<Vec<u64>>(), "{limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_exact_under_concurrency() {
    exactly_300_of_1008(Limit::TokenBucket {
        capacity: 300,
        refill_per_second: 1e-6,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_exact_under_concurrency() {
    exactly_300_of_1008(Limit::Gcra {
        burst: 300,
        per_second: 1e-6,
    })
    .await;
}

// Windows of 30 days: the chance that one edge falls inside the test's second is 4 × 10^-7.
const LONG: Duration = Duration::from_secs(30 * 24 * 3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_exact_under_concurrency() {
    exactly_300_of_1008(Limit::FixedWindow {
        limit: 300,
        window: LONG,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_log_exact_under_concurrency() {
    exactly_300_of_1008(Limit::SlidingWindowLog {
        limit: 300,
        window: Duration::from_secs(3600),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_counter_exact_under_concurrency() {
    exactly_300_of_1008(Limit::SlidingWindowCounter {
        limit: 300,
        window: LONG,
    })
    .await;
}

/// The slot of a key as Redis Cluster computes it: the hash tag when there is a non-empty one.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[tokio::test]
async fn keys_carry_one_hash_tag_and_expire() {
    let w = Duration::from_secs(60);
    let limits = [
        Limit::TokenBucket {
            capacity: 10,
            refill_per_second: 1.0,
        },
        Limit::Gcra {
            burst: 10,
            per_second: 1.0,
        },
        Limit::FixedWindow {
            limit: 10,
            window: w,
        },
        Limit::SlidingWindowLog {
            limit: 10,
            window: w,
        },
        Limit::SlidingWindowCounter {
            limit: 10,
            window: w,
        },
    ];
    let (l, _cleanup) = limiter(&limits, &["orders:10.0.0.7", "we{i}rd%"]).await;
    let prefix = l
        .redis_key(&limits[0], "")
        .trim_end_matches("}:tb")
        .to_owned();
    assert!(prefix.starts_with("{sekisho:test:"));
    let prefix = &prefix[1..];
    let mut c = conn().await;
    for (limit, suffix, max_ttl) in limits
        .iter()
        .zip(["tb", "gcra", "fw", "sl", "sc"])
        .zip([ms(2_000), ms(2_000), w, w, 2 * w])
        .map(|((l, s), t)| (l, s, t))
    {
        let key = l.redis_key(limit, "orders:10.0.0.7");
        assert_eq!(key, format!("{{{prefix}orders:10.0.0.7}}:{suffix}"));
        assert_eq!(hash_tag(&key), format!("{prefix}orders:10.0.0.7"));
        let odd = l.redis_key(limit, "we{i}rd%");
        assert_eq!(odd, format!("{{{prefix}we%7Bi%7Drd%25}}:{suffix}"));
        assert_eq!(hash_tag(&odd), format!("{prefix}we%7Bi%7Drd%25"));

        assert!(decide(&l, limit, "orders:10.0.0.7", 2).await.allowed);
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(
            pttl > 0 && pttl as u128 <= max_ttl.as_millis() + 1,
            "{key}: PTTL {pttl}"
        );
    }
}

#[tokio::test]
async fn idle_keys_vanish() {
    let limit = Limit::TokenBucket {
        capacity: 10,
        refill_per_second: 100.0,
    };
    let (l, _cleanup) = limiter(&[limit], &["k"]).await;
    assert!(decide(&l, &limit, "k", 5).await.allowed);
    // Full again after 50 ms: the key goes with it.
    tokio::time::sleep(ms(80)).await;
    let mut c = conn().await;
    let exists: u64 = redis::cmd("EXISTS")
        .arg(l.redis_key(&limit, "k"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    assert_eq!(decide(&l, &limit, "k", 1).await.remaining, 9);
}

#[tokio::test]
async fn invalid_limits_are_refused_without_a_round_trip() {
    let (l, _cleanup) = limiter(&[], &[]).await;
    for limit in [
        Limit::TokenBucket {
            capacity: 1,
            refill_per_second: 0.0,
        },
        Limit::Gcra {
            burst: 1,
            per_second: f64::NAN,
        },
        Limit::FixedWindow {
            limit: 1,
            window: Duration::ZERO,
        },
        Limit::SlidingWindowLog {
            limit: 1 << 53,
            window: ms(1),
        },
    ] {
        assert!(
            matches!(
                l.decide(&limit, "k", 1).await,
                Err(StoreError::InvalidLimit(_))
            ),
            "{limit:?}"
        );
    }
}

#[tokio::test]
async fn unreachable_redis_is_an_error_not_a_hang() {
    let started = Instant::now();
    let refused = sekisho_store::connect("redis://127.0.0.1:1").await;
    assert!(refused.is_err());
    assert!(started.elapsed() < sekisho_store::DEFAULT_CONNECT_TIMEOUT + ms(500));

    // A host that takes the connection and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let started = Instant::now();
    let timeout = ms(300);
    match sekisho_store::connect_with_timeout(&format!("redis://{addr}"), timeout).await {
        Err(e) => assert!(matches!(e, StoreError::Timeout(_)), "{e}"),
        Ok(conn) => {
            // The client sent nothing at connect: the first call must time out instead.
            let l = RedisLimiter::new(conn, unique_prefix(), ms(50));
            let limit = Limit::FixedWindow {
                limit: 1,
                window: ms(100),
            };
            assert!(matches!(
                l.decide(&limit, "k", 1).await,
                Err(StoreError::Timeout(_))
            ));
        }
    }
    assert!(
        started.elapsed() < timeout + ms(700),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}

/// A TCP proxy to Redis that can be told to hold every byte (a stalled Redis).
struct Proxy {
    url: String,
    stalled: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy() -> Proxy {
    let real = url();
    let rest = real.strip_prefix("redis://").expect("a redis:// URL");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let upstream = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:6379")
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    let task = tokio::spawn(async move {
        let mut pumps = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            pumps.spawn(pump(cr, sw, flag.clone()));
            pumps.spawn(pump(sr, cw, flag.clone()));
        }
    });
    Proxy {
        url: format!("redis://{addr}/{path}"),
        stalled,
        task,
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(ms(2)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_stalled_redis_times_out_and_the_connection_recovers() {
    let proxy = proxy().await;
    let conn = sekisho_store::connect(&proxy.url).await.unwrap();
    // 250 ms: long enough that a loaded 2-core machine answers the calls meant to succeed.
    let l = RedisLimiter::new(conn, unique_prefix(), ms(250));
    let limit = Limit::TokenBucket {
        capacity: 100,
        refill_per_second: 1.0,
    };
    let _cleanup = Cleanup(vec![l.redis_key(&limit, "k")]);
    assert!(l.decide(&limit, "k", 1).await.unwrap().allowed);

    proxy.stalled.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let stalled = l.decide(&limit, "k", 1).await;
    let waited = started.elapsed();
    assert!(
        matches!(stalled, Err(StoreError::Timeout(t)) if t == ms(250)),
        "{stalled:?}"
    );
    // It waited for the timeout, and did not hang past it (the bound is loose: no timing test).
    assert!(waited >= ms(250) && waited < ms(5_000), "{waited:?}");

    proxy.stalled.store(false, Ordering::Relaxed);
    // The late answer is read and dropped; the next call gets its own.
    let d = l.decide(&limit, "k", 1).await.unwrap();
    assert!(d.allowed);
    assert!(
        d.remaining == 97 || d.remaining == 98,
        "the timed-out call may or may not have run: {d:?}"
    );
}

fn presence_config(key: &str, id: &str) -> PresenceConfig {
    PresenceConfig {
        key: key.to_owned(),
        id: id.to_owned(),
        ttl: ms(500),
        interval: ms(100),
        timeout: ms(500),
    }
}

async fn wait_for(presence: &Presence, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while presence.instances() != count {
        assert!(
            Instant::now() < deadline,
            "{presence:?}: expected {count} instances"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn presence_counts_live_instances() {
    let key = format!("{}instances", unique_prefix());
    let _cleanup = Cleanup(vec![key.clone()]);
    let a = Presence::new(conn().await, presence_config(&key, "a"));
    let b = Presence::new(conn().await, presence_config(&key, "b"));
    assert_eq!(a.instances(), 1, "before any heartbeat: itself");
    let task_a = a.start();
    let task_b = b.start();
    wait_for(&a, 2).await;
    wait_for(&b, 2).await;

    // b dies: no leave; a counts it out once its entry is older than the TTL.
    drop(task_b);
    let started = Instant::now();
    wait_for(&a, 1).await;
    assert!(
        started.elapsed() >= ms(300),
        "b's entry lives a TTL: {:?}",
        started.elapsed()
    );

    // b comes back, then stops cleanly: counted out at once.
    let task_b = b.start();
    wait_for(&a, 2).await;
    task_b.stop().await.unwrap();
    assert_eq!(a.heartbeat().await.unwrap(), 1);
    task_a.stop().await.unwrap();
    let mut c = conn().await;
    let left: u64 = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn presence_remembers_the_count_when_redis_is_gone() {
    let key = format!("{}instances", unique_prefix());
    let _cleanup = Cleanup(vec![key.clone()]);
    let proxy = proxy().await;
    let mut config = presence_config(&key, "a");
    config.timeout = ms(50);
    let a = Presence::new(sekisho_store::connect(&proxy.url).await.unwrap(), config);
    let b = Presence::new(conn().await, presence_config(&key, "b"));
    let c = Presence::new(conn().await, presence_config(&key, "c"));
    b.heartbeat().await.unwrap();
    c.heartbeat().await.unwrap();
    assert_eq!(a.heartbeat().await.unwrap(), 3);

    proxy.stalled.store(true, Ordering::Relaxed);
    assert!(matches!(a.heartbeat().await, Err(StoreError::Timeout(_))));
    assert_eq!(a.instances(), 3, "the last count seen");
    let share = sekisho_store::instances::local_limit(
        &Limit::FixedWindow {
            limit: 300,
            window: ms(1000),
        },
        a.instances(),
    );
    assert_eq!(share.quota(), 100);
}

/// The decisions a runtime makes in one turn go to Redis as one pipeline, each answered with
/// its own result in the order Redis ran them (150 of 200 pass, with 150 distinct `remaining`);
/// decisions awaited one after the other go one per pipeline.
#[tokio::test]
async fn the_decisions_of_one_turn_go_to_redis_in_one_pipeline() {
    let limit = Limit::FixedWindow {
        limit: 150,
        window: Duration::from_secs(3600),
    };
    let (l, _cleanup) = limiter(&[limit], &["turn"]).await;
    let decisions =
        futures_util::future::join_all((0..200).map(|_| l.decide(&limit, "turn", 1))).await;
    assert_eq!(l.pipelines(), (1, 200), "one pipeline for the turn");
    let mut remaining: Vec<u64> = decisions
        .iter()
        .map(|d| d.as_ref().expect("decision"))
        .filter(|d| d.allowed)
        .map(|d| d.remaining)
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..150).collect::<Vec<u64>>());
    for _ in 0..3 {
        assert!(!l.decide(&limit, "turn", 1).await.expect("decision").allowed);
    }
    assert_eq!(l.pipelines(), (4, 203));
}

/// Redis forgot its scripts (a restart, a failover, `SCRIPT FLUSH`): the calls that met
/// `NOSCRIPT` are answered after the scripts are loaded again.
#[tokio::test]
async fn calls_that_meet_noscript_are_sent_again_after_loading_the_scripts() {
    let limit = Limit::TokenBucket {
        capacity: 10,
        refill_per_second: 1e-6,
    };
    let (l, _cleanup) = limiter(&[limit], &["flushed"]).await;
    let mut admin = conn().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    let decisions =
        futures_util::future::join_all((0..4).map(|_| l.decide(&limit, "flushed", 1))).await;
    let mut remaining: Vec<u64> = decisions
        .into_iter()
        .map(|d| d.expect("decided after NOSCRIPT").remaining)
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, vec![6, 7, 8, 9]);
}
