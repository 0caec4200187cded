//! Rate limits shared through a real Redis by two real gateway processes, and what each
//! `on_store_error` mode does when that Redis goes away mid-traffic and comes back.
//!
//! The shared Redis is `SEKISHO_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); each test
//! names its routes with a random suffix so runs never share keys. The Redis that is stopped
//! and started again is a private `redis-server` on a free port.
// The helpers outside the #[test] functions fail their test as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use sekisho_testkit::{client, try_send, Sekisho, TempDir};

/// The two tests run one after the other: each starts gateways and fires hundreds of requests,
/// and an exactness test must not have its Redis calls slowed past their 50 ms timeout (which
/// hands decisions to `on_store_error`) by the other test's load on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

fn shared_redis() -> String {
    std::env::var("SEKISHO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn suffix() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// One gateway in front of `upstream` with `routes` (TOML of `[[routes]]` tables).
fn gateway(dir: &TempDir, name: &str, redis: &str, upstream: &Sekisho, routes: &str) -> Sekisho {
    let config = dir.write(
        &format!("{name}.toml"),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [store]\nredis = \"{redis}\"\n\
             [upstreams.app]\ntargets = [\"{}\"]\n{routes}",
            upstream.address
        ),
    );
    Sekisho::start(&binary(), &config)
}

/// Fires `total` GETs at `urls` (spread evenly, `concurrency` at a time per URL); counts of
/// (200, 429, anything else).
async fn fire(urls: &[String], total: usize, concurrency: usize) -> (usize, usize, usize) {
    let per_url = total / urls.len();
    let mut tasks = Vec::new();
    for url in urls {
        for worker in 0..concurrency {
            let url = url.clone();
            let count = per_url / concurrency + usize::from(worker < per_url % concurrency);
            tasks.push(tokio::spawn(async move {
                let http = client();
                let mut seen = (0, 0, 0);
                for _ in 0..count {
                    match try_send(&http, "GET", &url, &[], Bytes::new()).await {
                        Ok(answer) if answer.status == 200 => seen.0 += 1,
                        Ok(answer) if answer.status == 429 => {
                            assert_eq!(answer.error_code(), "RATE_LIMITED");
                            assert!(answer.header("retry-after").is_some());
                            seen.1 += 1
                        }
                        _ => seen.2 += 1,
                    }
                }
                seen
            }));
        }
    }
    let mut total_seen = (0, 0, 0);
    for task in tasks {
        let seen = task.await.unwrap();
        total_seen.0 += seen.0;
        total_seen.1 += seen.1;
        total_seen.2 += seen.2;
    }
    total_seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_admit_exactly_the_limit_for_every_algorithm() {
    let _serial = SERIAL.lock().await;
    let upstream = Sekisho::start_upstream(&binary(), "app");
    let dir = TempDir::new("ratelimit-redis");
    let run = suffix();
    let limits = [
        (
            "tb",
            "algorithm = \"token_bucket\"\ncapacity = 200\nrefill_per_second = 0.001",
        ),
        (
            "gcra",
            "algorithm = \"gcra\"\ncapacity = 200\nrefill_per_second = 0.001",
        ),
        (
            "fw",
            "algorithm = \"fixed_window\"\nlimit = 200\nwindow = \"1h\"",
        ),
        (
            "sl",
            "algorithm = \"sliding_window_log\"\nlimit = 200\nwindow = \"1h\"",
        ),
        (
            "sc",
            "algorithm = \"sliding_window_counter\"\nlimit = 200\nwindow = \"1h\"",
        ),
    ];
    let routes: String = limits
        .iter()
        .map(|(name, limit)| {
            format!(
                "[[routes]]\nname = \"{name}-{run}\"\npath_prefix = \"/{name}\"\nupstream = \"app\"\n\
                 [routes.rate_limit]\n{limit}\nkey = \"route\"\nbackend = \"redis\"\n"
            )
        })
        .collect();
    let a = gateway(&dir, "a", &shared_redis(), &upstream, &routes);
    let b = gateway(&dir, "b", &shared_redis(), &upstream, &routes);
    // Until its link to Redis is up a gateway decides by on_store_error: wait for both.
    await_redis_status(&a, "healthy").await;
    await_redis_status(&b, "healthy").await;
    for (name, _) in limits {
        let urls = [a.url(&format!("/{name}")), b.url(&format!("/{name}"))];
        let (ok, limited, other) = fire(&urls, 600, 8).await;
        assert_eq!(other, 0, "{name}: only 200 and 429");
        assert_eq!(ok, 200, "{name}: exactly the limit across both gateways");
        assert_eq!(limited, 400, "{name}");
    }
    // The answers told the client about the limit.
    let answer = try_send(&client(), "GET", &a.url("/fw"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(answer.header("ratelimit-limit"), Some("200"));
    assert_eq!(answer.header("ratelimit-remaining"), Some("0"));
    let metrics = reqwest_text(&a.admin_url("/metrics")).await;
    assert!(
        metrics.contains(&format!(
            "sekisho_rate_limit_decisions_total{{route=\"fw-{run}\",result=\"limited\"}}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("sekisho_rate_limit_store_seconds_bucket"));
    // The admin API reads the shared usage from Redis, on either instance.
    let usage = reqwest_text(&b.admin_url(&format!(
        "/api/v1/ratelimits?scope=sc-{run}&key=route%3Dsc-{run}"
    )))
    .await;
    let usage: serde_json::Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(usage["limit"], 200, "{usage}");
    assert_eq!(usage["remaining"], 0, "{usage}");
    let all = reqwest_text(&a.admin_url("/api/v1/ratelimits")).await;
    assert!(all.contains(&format!("\"scope\":\"tb-{run}\"")), "{all}");
    assert!(all.contains("\"backend\":\"redis\""), "{all}");
}

async fn reqwest_text(url: &str) -> String {
    let answer = try_send(&client(), "GET", url, &[], Bytes::new())
        .await
        .unwrap();
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// A private `redis-server` on `port`, stopped on drop.
struct PrivateRedis {
    child: Child,
}

impl PrivateRedis {
    fn start(port: u16, dir: &Path) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `/health/detailed` until its `redis` check has `status`.
async fn await_redis_status(gateway: &Sekisho, status: &str) -> serde_json::Value {
    await_redis(gateway, |redis| redis["status"] == status).await
}

/// Polls `/health/detailed` until its `redis` check satisfies `wanted`.
async fn await_redis(
    gateway: &Sekisho,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = try_send(
            &client(),
            "GET",
            &gateway.admin_url("/health/detailed"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        let json = answer.json();
        if wanted(&json["checks"]["redis"]) {
            return json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis check never as wanted: {json:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_traffic_follows_on_store_error_and_recovers() {
    let _serial = SERIAL.lock().await;
    let upstream = Sekisho::start_upstream(&binary(), "app");
    let dir = TempDir::new("ratelimit-redis-down");
    let port = free_port();
    let mut redis = PrivateRedis::start(port, dir.path());
    let url = format!("redis://127.0.0.1:{port}");
    let routes = "[[routes]]\nname = \"allow\"\npath_prefix = \"/allow\"\nupstream = \"app\"\n\
         [routes.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 10\nwindow = \"1h\"\nkey = \"route\"\nbackend = \"redis\"\non_store_error = \"allow\"\n\
         [[routes]]\nname = \"deny\"\npath_prefix = \"/deny\"\nupstream = \"app\"\n\
         [routes.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 10\nwindow = \"1h\"\nkey = \"route\"\nbackend = \"redis\"\non_store_error = \"deny\"\n\
         [[routes]]\nname = \"local\"\npath_prefix = \"/local\"\nupstream = \"app\"\n\
         [routes.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 10\nwindow = \"1h\"\nkey = \"route\"\nbackend = \"redis\"\non_store_error = \"local\"\n";
    let a = gateway(&dir, "a", &url, &upstream, routes);
    let b = gateway(&dir, "b", &url, &upstream, routes);
    let both = |path: &str| [a.url(path), b.url(path)];

    // Redis up: 10 in all for each route, across both gateways.
    for path in ["/allow", "/deny"] {
        let (ok, limited, _) = fire(&both(path), 20, 2).await;
        assert_eq!((ok, limited), (10, 10), "{path} with redis up");
    }
    // The `local` route is used lightly, so each gateway has counted the other (heartbeats
    // every 3 s) before Redis goes.
    let (ok, _, _) = fire(&both("/local"), 2, 1).await;
    assert_eq!(ok, 2);
    for gateway in [&a, &b] {
        await_redis(gateway, |redis| redis["instances"] == 2).await;
    }
    redis.stop();

    // allow: everything passes; deny: nothing does; local: each gateway its share (10 / 2).
    let (ok, limited, other) = fire(&both("/allow"), 20, 2).await;
    assert_eq!((ok, limited, other), (20, 0, 0), "allow with redis down");
    let (ok, limited, other) = fire(&both("/deny"), 20, 2).await;
    assert_eq!((ok, limited, other), (0, 20, 0), "deny with redis down");
    let (ok, limited, other) = fire(&both("/local"), 40, 2).await;
    assert_eq!(other, 0);
    assert_eq!(
        ok, 10,
        "each of two gateways admits its share of 5 ({limited} refused)"
    );
    let health = await_redis_status(&a, "degraded").await;
    assert!(health["checks"]["redis"]["errors"].as_u64().unwrap() > 0);

    // Redis back (empty: it kept nothing): the limits are shared again by themselves.
    let _redis = PrivateRedis::start(port, dir.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, limited, _) = fire(&[a.url("/deny")], 1, 1).await;
        if ok == 1 {
            break;
        }
        assert_eq!(limited, 1);
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    await_redis_status(&a, "healthy").await;
    let (ok, limited, _) = fire(&both("/deny"), 20, 2).await;
    assert_eq!(
        (ok, limited),
        (9, 11),
        "shared again: 10 in all, one taken above"
    );
}
