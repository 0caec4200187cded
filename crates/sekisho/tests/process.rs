//! The real `sekisho` binary: `check`, `run` with its admin listener, reload by API, SIGHUP and
//! file watch (under load, with no failed request), and a graceful SIGTERM drain.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sekisho_load::{ChaosHandle, ChaosState};
use sekisho_testkit::{client, get, promtool, send, try_send, Sekisho, TempDir};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

fn repository_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

async fn upstream(name: &str) -> (SocketAddr, ChaosHandle) {
    let upstream = sekisho_testkit::chaos_upstream(name).await;
    (upstream.address, upstream.handle)
}

fn config(target: SocketAddr, route_path: &str, extra: &str) -> String {
    config_watching(target, route_path, extra, "100ms")
}

/// `config`, with the file watch's interval (`"0s"`: no watch).
fn config_watching(target: SocketAddr, route_path: &str, extra: &str, watch: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
drain_timeout = "10s"
{extra}
[admin]
listen = "127.0.0.1:0"
token = "t0ken"
watch_interval = "{watch}"

[upstreams.u]
targets = ["{target}"]

[[routes]]
name = "r"
path_prefix = "{route_path}"
upstream = "u"
"#
    )
}

#[test]
fn check_accepts_the_contract_example_and_names_the_place_of_an_error() {
    let output = Command::new(binary())
        .args(["check", "--config"])
        .arg(repository_file("examples/contract.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("3 routes"), "{stdout}");

    let dir = TempDir::new("check");
    let wrong = dir.write(
        "wrong.toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nbalance = \"round_robn\"\n",
    );
    let output = Command::new(binary())
        .args(["check", "--config"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("{}:6:11: ", wrong.display())),
        "{stderr}"
    );
    assert!(stderr.contains("round_robin"), "{stderr}");
}

#[test]
fn run_refuses_a_wrong_config_with_its_place_and_exit_1() {
    let dir = TempDir::new("run-wrong");
    let wrong = dir.write("bad.toml", "[server]\nlisten = 8080\n");
    let output = Command::new(binary())
        .args(["run", "--config"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{}:2:10:", wrong.display())),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_and_guard_the_api() {
    let (target, _handle) = upstream("u").await;
    let dir = TempDir::new("admin");
    // A server-wide rate limit and a cached route, so their metric families are checked too.
    let limited =
        "[server.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 1000\nwindow = \"1m\"\n";
    let cached = "\n[[routes]]\nname = \"cached\"\npath_prefix = \"/cached\"\nupstream = \"u\"\n\
                  [routes.cache]\nttl = \"60s\"\n";
    let text = config(target, "/hello", limited) + cached;
    let path = dir.write("sekisho.toml", &text);
    let gateway = Sekisho::start(&binary(), &path);
    for _ in 0..3 {
        assert_eq!(get(&gateway.url("/hello")).await.status, 200);
    }
    assert_eq!(get(&gateway.url("/hello")).await.status, 200);
    for _ in 0..2 {
        assert_eq!(get(&gateway.url("/cached")).await.status, 200);
    }

    let health = get(&gateway.admin_url("/health")).await;
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, "ok".into())
    );
    assert_eq!(get(&gateway.admin_url("/ready")).await.status, 200);
    let detailed = get(&gateway.admin_url("/health/detailed")).await;
    assert_eq!(detailed.status, 200);
    assert_eq!(detailed.json()["status"], "healthy");
    assert!(detailed.json()["checks"]["upstreams"]["u"].is_object());

    let metrics = get(&gateway.admin_url("/metrics")).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains("sekisho_requests_total{route=\"r\",upstream=\"u\",class=\"2xx\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("sekisho_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(
        text.contains("sekisho_cache_lookups_total{route=\"cached\",result=\"hit\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sekisho_rate_limit_decisions_total{route=\"*\",result=\"allowed\"} 6"),
        "{text}"
    );
    promtool(&["check", "metrics"], &text);

    let unauthorized = get(&gateway.admin_url("/api/v1/upstreams")).await;
    assert_eq!(unauthorized.status, 401);
    assert_eq!(unauthorized.error_code(), "UNAUTHENTICATED");
    let http = client();
    let upstreams = send(
        &http,
        "GET",
        &gateway.admin_url("/api/v1/upstreams"),
        &[("authorization", "Bearer t0ken")],
        Bytes::new(),
    )
    .await;
    assert_eq!(upstreams.status, 200);
    assert_eq!(
        upstreams.json()["upstreams"][0]["targets"][0]["address"],
        target.to_string()
    );

    // The cache's admin API: figures, a purge, and a purge that says nothing to purge.
    let auth = [("authorization", "Bearer t0ken")];
    let cache = send(
        &http,
        "GET",
        &gateway.admin_url("/api/v1/cache"),
        &auth,
        Bytes::new(),
    )
    .await;
    assert_eq!(cache.status, 200);
    assert_eq!(cache.json()["cache"]["entries"], 1, "{:?}", cache.body);
    let purge_url = gateway.admin_url("/api/v1/cache/purge");
    let purged = send(
        &http,
        "POST",
        &purge_url,
        &auth,
        Bytes::from(r#"{"prefix": "cached:"}"#),
    )
    .await;
    assert_eq!(purged.status, 200, "{:?}", purged.body);
    assert_eq!(
        purged.json()["shared_deleted"],
        0,
        "no Redis: nothing shared"
    );
    let cache = send(
        &http,
        "GET",
        &gateway.admin_url("/api/v1/cache"),
        &auth,
        Bytes::new(),
    )
    .await;
    assert_eq!(cache.json()["cache"]["entries"], 0);
    let wrong = send(
        &http,
        "POST",
        &purge_url,
        &auth,
        Bytes::from(r#"{"everything": true}"#),
    )
    .await;
    assert_eq!(
        (wrong.status, wrong.error_code()),
        (400, "BAD_REQUEST".to_owned())
    );
}

/// What makes a reload happen in a round of [`reload_rounds`].
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Api,
    Hangup,
    FileWatch,
}

/// Four clients in a loop on `url` until `stop`; each returns its failed answers.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    loaders: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(url: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut loaders = Vec::new();
        for _ in 0..4 {
            let url = url.to_owned();
            let stop = Arc::clone(&stop);
            let answered = Arc::clone(&answered);
            loaders.push(tokio::spawn(async move {
                let http = client();
                let mut failures = Vec::new();
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) && count < 200_000 {
                    match try_send(&http, "GET", &url, &[], Bytes::new()).await {
                        Ok(answer) if answer.status == 200 => {}
                        Ok(answer) => failures.push(format!("status {}", answer.status)),
                        Err(error) => failures.push(error),
                    }
                    count += 1;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                failures
            }));
        }
        Self {
            stop,
            answered,
            loaders,
        }
    }

    /// Waits for 200 more answers.
    async fn more_answers(&self) {
        let at_least = self.answered.load(Ordering::Relaxed) + 200;
        while self.answered.load(Ordering::Relaxed) < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the clients; every failed answer.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for loader in self.loaders {
            failures.extend(loader.await.unwrap());
        }
        failures
    }
}

/// Rewrites the config between two upstreams, one round per trigger, and waits for each
/// reload's generation in the log, under load.
async fn reload_rounds(
    gateway: &mut Sekisho,
    dir: &TempDir,
    upstreams: [SocketAddr; 2],
    watch: &str,
    triggers: &[Trigger],
    load: &Load,
) {
    let http = client();
    for (round, trigger) in triggers.iter().enumerate() {
        let target = upstreams[(round + 1) % 2];
        dir.write("sekisho.toml", &config_watching(target, "/", "", watch));
        match trigger {
            Trigger::Api => {
                let answer = send(
                    &http,
                    "POST",
                    &gateway.admin_url("/api/v1/config/reload"),
                    &[("authorization", "Bearer t0ken")],
                    Bytes::new(),
                )
                .await;
                assert_eq!(answer.status, 200, "{:?}", answer.body);
            }
            Trigger::Hangup => gateway.signal("HUP"),
            Trigger::FileWatch => {} // the file watch sees the change
        }
        let generation = round as u64 + 2;
        let seen = tokio::task::block_in_place(|| {
            gateway.wait_for_log(
                |json| {
                    json["message"] == "config reloaded"
                        && json["generation"].as_u64() == Some(generation)
                },
                Duration::from_secs(10),
            )
        });
        assert!(
            seen.is_some(),
            "{trigger:?}: generation {generation} not loaded:\n{}",
            gateway.log()
        );
        load.more_answers().await;
    }
}

/// Each trigger proves itself: the API and SIGHUP rounds run with the file watch off
/// (`watch_interval = "0s"`), the file-watch rounds on a second process that has it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_by_api_sighup_and_file_under_load_fail_no_request() {
    let (first, _h1) = upstream("first").await;
    let (second, _h2) = upstream("second").await;
    let upstreams = [first, second];

    // The API and SIGHUP, no watch.
    let dir = TempDir::new("reload");
    let path = dir.write("sekisho.toml", &config_watching(first, "/", "", "0s"));
    let mut gateway = Sekisho::start(&binary(), &path);
    let load = Load::start(&gateway.url("/load"));
    let triggers = [
        Trigger::Api,
        Trigger::Hangup,
        Trigger::Api,
        Trigger::Hangup,
        Trigger::Api,
        Trigger::Hangup,
    ];
    reload_rounds(&mut gateway, &dir, upstreams, "0s", &triggers, &load).await;

    // A broken config is refused with its place, and the old one keeps serving.
    dir.write(
        "sekisho.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n",
    );
    let refused = send(
        &client(),
        "POST",
        &gateway.admin_url("/api/v1/config/reload"),
        &[("authorization", "Bearer t0ken")],
        Bytes::new(),
    )
    .await;
    assert_eq!(refused.status, 400);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("sekisho.toml:3:1:"), "{message}");
    let detailed = get(&gateway.admin_url("/health/detailed")).await;
    assert_eq!(detailed.json()["checks"]["config"]["status"], "degraded");
    load.more_answers().await;
    let answered = load.answered.load(Ordering::Relaxed);
    let failures = load.finish().await;
    assert!(
        failures.is_empty(),
        "failed answers during reloads: {failures:?}\n{}",
        gateway.log()
    );
    assert!(answered >= 1400, "{answered}");
    drop(gateway);

    // The file watch alone.
    let dir = TempDir::new("reload-watch");
    let path = dir.write("sekisho.toml", &config_watching(first, "/", "", "100ms"));
    let mut gateway = Sekisho::start(&binary(), &path);
    let load = Load::start(&gateway.url("/load"));
    let triggers = [Trigger::FileWatch; 3];
    reload_rounds(&mut gateway, &dir, upstreams, "100ms", &triggers, &load).await;
    let failures = load.finish().await;
    assert!(
        failures.is_empty(),
        "failed answers during reloads: {failures:?}\n{}",
        gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_0() {
    let (target, handle) = upstream("slow").await;
    let dir = TempDir::new("drain");
    let path = dir.write("sekisho.toml", &config(target, "/", ""));
    let mut gateway = Sekisho::start(&binary(), &path);
    handle.set(ChaosState {
        latency_ms: 1_000,
        ..ChaosState::default()
    });
    let in_flight = tokio::spawn({
        let url = gateway.url("/slow");
        async move { get(&url).await }
    });
    while handle.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.signal("TERM");
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "the request in flight was answered");
    let code = tokio::task::block_in_place(|| gateway.wait_exit(Duration::from_secs(15)));
    assert_eq!(code, Some(0), "{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_circuits_and_takes_operator_actions() {
    let (target, _upstream) = upstream("u").await;
    let dir = TempDir::new("circuits");
    let path = dir.write(
        "sekisho.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t0ken\"\n\
             [upstreams.u]\ntargets = [\"{target}\"]\n[upstreams.u.circuit_breaker]\nminimum_calls = 5\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n"
        ),
    );
    let gateway = Sekisho::start(&binary(), &path);
    let http = client();
    let auth = [("authorization", "Bearer t0ken")];
    let listed = send(
        &http,
        "GET",
        &gateway.admin_url("/api/v1/circuits"),
        &auth,
        Bytes::new(),
    )
    .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["circuits"][0]["name"], "u");
    assert_eq!(listed.json()["circuits"][0]["state"], "closed");

    let url = gateway.admin_url("/api/v1/circuits/u");
    let forced = send(&http, "POST", &url, &auth, r#"{"action":"force_open"}"#).await;
    assert_eq!(forced.status, 200, "{:?}", forced.body);
    assert_eq!(forced.json()["circuit"]["state"], "forced_open");
    let rejected = get(&gateway.url("/x")).await;
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.json()["error"]["code"], "CIRCUIT_OPEN");
    let reset = send(&http, "POST", &url, &auth, r#"{"action":"reset"}"#).await;
    assert_eq!(reset.json()["circuit"]["state"], "closed");
    assert_eq!(get(&gateway.url("/x")).await.status, 200);

    let unknown = send(
        &http,
        "POST",
        &gateway.admin_url("/api/v1/circuits/nope"),
        &auth,
        r#"{"action":"reset"}"#,
    )
    .await;
    assert_eq!(unknown.status, 404);
    let bad = send(&http, "POST", &url, &auth, r#"{"action":"explode"}"#).await;
    assert_eq!(bad.status, 400);
    let unauthorized = send(&http, "POST", &url, &[], r#"{"action":"reset"}"#).await;
    assert_eq!(unauthorized.status, 401);

    // The circuit and target families are valid exposition too.
    let metrics = get(&gateway.admin_url("/metrics")).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(text.contains("sekisho_circuit_state{"), "{text}");
    assert!(
        text.contains("sekisho_upstream_target_picks_total{"),
        "{text}"
    );
    promtool(&["check", "metrics"], &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request_with_its_fields() {
    let (target, _handle) = upstream("u").await;
    let dir = TempDir::new("access-log");
    let path = dir.write("sekisho.toml", &config(target, "/", "access_log = true"));
    let mut gateway = Sekisho::start(&binary(), &path);
    let answer = get(&gateway.url("/orders/7?x=1")).await;
    assert_eq!(answer.status, 200);
    let request_id = answer.header("x-request-id").unwrap().to_owned();
    let line = tokio::task::block_in_place(|| {
        gateway.wait_for_log(
            |json| json["target"] == "sekisho::access" && json["path"] == "/orders/7",
            Duration::from_secs(10),
        )
    })
    .unwrap_or_else(|| panic!("no access log line:\n{}", gateway.log()));
    assert_eq!(line["message"], "request", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["request_id"], request_id.as_str(), "{line}");
    assert_eq!(line["route"], "r", "{line}");
    assert_eq!(line["upstream"], "u", "{line}");
    assert_eq!(line["target_address"], target.to_string(), "{line}");
    assert_eq!(line["tries"], 1, "{line}");
    assert_eq!(line["client"], "127.0.0.1", "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_to_a_scraper_that_asks_and_prometheus_text_otherwise() {
    let (target, _handle) = upstream("u").await;
    let dir = TempDir::new("openmetrics");
    let path = dir.write("sekisho.toml", &config(target, "/", ""));
    let gateway = Sekisho::start(&binary(), &path);
    assert_eq!(get(&gateway.url("/x")).await.status, 200);
    let http = client();
    let scrape = |accept: Option<&'static str>| {
        let http = http.clone();
        let url = gateway.admin_url("/metrics");
        async move {
            let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
            let answer = send(&http, "GET", &url, &headers, Bytes::new()).await;
            assert_eq!(answer.status, 200);
            let text = String::from_utf8(answer.body.to_vec()).unwrap();
            (answer.header("content-type").unwrap_or("").to_owned(), text)
        }
    };

    let (content_type, text) = scrape(Some("application/openmetrics-text; version=1.0.0")).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("sekisho_requests_total{"), "{text}");

    for accept in [None, Some("text/plain")] {
        let (content_type, text) = scrape(accept).await;
        assert_eq!(
            content_type, "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(!text.contains("# EOF"), "{accept:?}: {text}");
        assert!(text.contains("sekisho_requests_total{"), "{text}");
    }
}
