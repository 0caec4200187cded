//! Rate limits shared through a real Redis by two real gateway processes, what each
//! `on_store_error` mode does when that Redis goes away mid-traffic and comes back, and how long
//! a decision waits for a Redis that is slow (`[store] redis_timeout`).
//!
//! The shared Redis is `SEKISHO_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); each test
//! names its routes with a random suffix so runs never share keys. A Redis that is stopped and
//! started again, or paused, is a private `redis-server` on a free port.
// The helpers outside the #[test] functions fail their test as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use sekisho_testkit::{client, try_send, Sekisho, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tests run one after the other: each starts gateways and fires requests, and an exactness
/// test must not have its Redis calls slowed past their `redis_timeout` (which hands decisions to
/// `on_store_error`) by another test's load on two cores.
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

/// An exactness test's `[store] redis_timeout`: generous, so that no Redis call of a loaded
/// machine outlasts it and hands its decision to `on_store_error` (users keep the 50 ms default).
const EXACT_TIMEOUT: &str = "2s";

/// One gateway in front of `upstream` with `routes` (TOML of `[[routes]]` tables), each Redis
/// call of a rate-limit decision bounded by `timeout` (`[store] redis_timeout`).
fn gateway(
    dir: &TempDir,
    name: &str,
    redis: &str,
    timeout: &str,
    upstream: &Sekisho,
    routes: &str,
) -> Sekisho {
    let config = dir.write(
        &format!("{name}.toml"),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [store]\nredis = \"{redis}\"\nredis_timeout = \"{timeout}\"\n\
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
    let redis = shared_redis();
    let a = gateway(&dir, "a", &redis, EXACT_TIMEOUT, &upstream, &routes);
    let b = gateway(&dir, "b", &redis, EXACT_TIMEOUT, &upstream, &routes);
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
    // Once Redis had refused a key, the gateway refused it again in process until the moment
    // Redis gave, without a round trip (issue 20) — and the counts above stayed exact.
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{{route=\"fw-{run}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
            .parse()
            .unwrap()
    };
    let asked = value("sekisho_rate_limit_store_seconds_count");
    let known = value("sekisho_rate_limit_known_over_total");
    assert_eq!(
        asked + known,
        301,
        "every request of a's 300 + 1 decided once"
    );
    assert!(
        known >= 150,
        "most of a's ~200 refusals made without Redis: {known}"
    );
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
         [routes.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 10\nwindow = \"1h\"\nkey = \"route\"\nbackend = \"redis\"\non_store_error = \"local\"\n\
         [[routes]]\nname = \"known\"\npath_prefix = \"/known\"\nupstream = \"app\"\n\
         [routes.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 1\nwindow = \"1h\"\nkey = \"route\"\nbackend = \"redis\"\non_store_error = \"allow\"\n";
    let a = gateway(&dir, "a", &url, EXACT_TIMEOUT, &upstream, routes);
    let b = gateway(&dir, "b", &url, EXACT_TIMEOUT, &upstream, routes);
    let both = |path: &str| [a.url(path), b.url(path)];

    // Redis up: each route's 10 taken across both gateways, none refused yet (a key Redis has
    // refused is refused in process until its retry_after, whatever happens to Redis: `known`).
    for path in ["/allow", "/deny"] {
        let (ok, limited, _) = fire(&both(path), 10, 2).await;
        assert_eq!((ok, limited), (10, 0), "{path} with redis up");
    }
    // `known`: one admitted in all; each gateway has seen Redis refuse the key.
    let (ok, limited, _) = fire(&both("/known"), 4, 1).await;
    assert_eq!((ok, limited), (1, 3), "/known with redis up");
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
    // What Redis said still holds: its refusal of `known` lasts the window, `allow` or not.
    let (ok, limited, other) = fire(&both("/known"), 4, 1).await;
    assert_eq!(
        (ok, limited, other),
        (0, 4, 0),
        "a key known over, redis down"
    );
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
    // No answer to its PING: no round trip to show.
    assert!(health["checks"]["redis"]["rtt_ms"].is_null(), "{health}");

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
    let health = await_redis_status(&a, "healthy").await;
    // Back: its round trip shown again.
    let rtt = health["checks"]["redis"]["rtt_ms"].as_f64();
    assert!(rtt.is_some_and(|ms| (0.0..100.0).contains(&ms)), "{health}");
    let (ok, limited, _) = fire(&both("/deny"), 20, 2).await;
    assert_eq!(
        (ok, limited),
        (9, 11),
        "shared again: 10 in all, one taken above"
    );
}

/// Holds every command of every client of the Redis on `port` for `pause` (`CLIENT PAUSE … ALL`,
/// which needs no debug command); returns once Redis has answered, that is once the pause holds.
async fn pause_redis(port: u16, pause: Duration) {
    let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let millis = pause.as_millis().to_string();
    let command = format!(
        "*4\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n${}\r\n{millis}\r\n$3\r\nALL\r\n",
        millis.len()
    );
    connection.write_all(command.as_bytes()).await.unwrap();
    let mut reply = [0; 5];
    connection.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"+OK\r\n", "CLIENT PAUSE refused");
}

/// The value of the sample `name` (its labels included) in a Prometheus text exposition; 0 when
/// absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_timeout_bounds_how_long_a_decision_waits_for_redis() {
    let _serial = SERIAL.lock().await;
    let upstream = Sekisho::start_upstream(&binary(), "app");
    let dir = TempDir::new("ratelimit-redis-timeout");
    // A private Redis: the pause below holds every client of the server it is sent to.
    let port = free_port();
    let _redis = PrivateRedis::start(port, dir.path());
    let url = format!("redis://127.0.0.1:{port}");
    let routes = "[[routes]]\nname = \"deny\"\npath_prefix = \"/deny\"\nupstream = \"app\"\n\
         [routes.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 100\nwindow = \"1h\"\nkey = \"route\"\nbackend = \"redis\"\non_store_error = \"deny\"\n";
    let hasty = gateway(&dir, "hasty", &url, "50ms", &upstream, routes);
    let patient = gateway(&dir, "patient", &url, "3s", &upstream, routes);
    // Both decide by Redis before it stalls (connected, the script loaded); on a loaded machine
    // a first call may outlast 50 ms all the same, and "deny" refuses it: try again.
    for gateway in [&patient, &hasty] {
        await_redis_status(gateway, "healthy").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while fire(&[gateway.url("/deny")], 1, 1).await.0 != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis never decided"
            );
        }
    }
    let errors = |metrics: &str| {
        sample(
            metrics,
            "sekisho_rate_limit_store_errors_total{route=\"deny\"}",
        )
    };
    let hasty_errors = errors(&reqwest_text(&hasty.admin_url("/metrics")).await);

    // Redis holds every command for 1.5 s from now: longer than 50 ms, shorter than 3 s. Both
    // requests are sent while it holds.
    let (http, hasty_url, patient_url) = (client(), hasty.url("/deny"), patient.url("/deny"));
    pause_redis(port, Duration::from_millis(1500)).await;
    let (hasty_answer, patient_answer) = tokio::join!(
        try_send(&http, "GET", &hasty_url, &[], Bytes::new()),
        try_send(&http, "GET", &patient_url, &[], Bytes::new()),
    );

    // 50 ms: the wait ended first, and on_store_error = "deny" refused (Redis, which has most of
    // the 100 left anyway, would have asked for most of the hour's window, not 1 s).
    let refused = hasty_answer.unwrap();
    assert_eq!(
        refused.status,
        429,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.error_code(), "RATE_LIMITED");
    assert_eq!(refused.header("retry-after"), Some("1"));
    // The client is told the limit could not be checked, not that it was reached.
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("could not be checked"), "{message}");
    let metrics = reqwest_text(&hasty.admin_url("/metrics")).await;
    assert_eq!(errors(&metrics), hasty_errors + 1.0, "{metrics}");

    // 3 s: Redis decided, once the pause was over.
    let admitted = patient_answer.unwrap();
    assert_eq!(
        admitted.status,
        200,
        "{}",
        String::from_utf8_lossy(&admitted.body)
    );
    assert_eq!(admitted.header("ratelimit-limit"), Some("100"));
    let metrics = reqwest_text(&patient.admin_url("/metrics")).await;
    assert_eq!(errors(&metrics), 0.0, "{metrics}");
    // … after waiting for it far longer than 50 ms: the decisions Redis made for this gateway
    // took more than 250 ms in all, which two bounded by 50 ms (the key ignored) could not. So
    // the request reached Redis while it was held (the test would prove nothing otherwise).
    let waited = sample(
        &metrics,
        "sekisho_rate_limit_store_seconds_sum{route=\"deny\"}",
    );
    assert!(
        waited > 0.25,
        "the decisions waited {waited} s for Redis in all, not the pause"
    );
}
