//! Overload without collapse (issue 14): a gateway saturated by its own work — one worker, a
//! fast upstream, far more connections than it can serve at once — must keep serving about as
//! many good answers with adaptive concurrency as without it. Before the limiter knew the event
//! loop's own delay, the saturated loop's latency read as a slow upstream, the limit fell to its
//! floor, and the gateway spent its core refusing: a tenth of the goodput.
//!
//! The two gateways run one after the other against the same upstream under the same bounded
//! load; the test compares their 2xx counts as a ratio with a generous bound (timing is the
//! benchmark's business: docs/benchmarks.md has the measured figures).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sekisho_testkit::{client, get, send, try_send, Sekisho, TempDir};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

/// The scenarios saturate the machine: one at a time, so that one's load does not skew
/// another's comparison.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Good and refused answers seen by `connections` clients looping on `url` for `warm + span`;
/// only those after `warm` are counted.
async fn drive(url: &str, connections: usize, warm: Duration, span: Duration) -> (u64, u64) {
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let good = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (url, counting, stop, good, refused) = (
            url.to_owned(),
            Arc::clone(&counting),
            Arc::clone(&stop),
            Arc::clone(&good),
            Arc::clone(&refused),
        );
        tasks.push(tokio::spawn(async move {
            let http = client();
            // Bounded: at most this many requests per client, whatever the clock does.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let answer = try_send(&http, "GET", &url, &[], Bytes::new()).await;
                if !counting.load(Ordering::Relaxed) {
                    continue;
                }
                match answer {
                    Ok(answer) if answer.status == 200 => good.fetch_add(1, Ordering::Relaxed),
                    other => {
                        if refused.fetch_add(1, Ordering::Relaxed) % 5000 == 0 {
                            let what = match other {
                                Ok(answer) => format!("{} {}", answer.status, answer.error_code()),
                                Err(error) => error,
                            };
                            eprintln!("not served: {what}");
                        }
                        0
                    }
                };
            }
        }));
    }
    tokio::time::sleep(warm).await;
    counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    (
        good.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}

/// A one-worker gateway in front of `upstream`, with `policies` (TOML appended after the route)
/// and the upstream's own `upstream_policies` (after `[upstreams.app]`).
fn config(upstream: std::net::SocketAddr, upstream_policies: &str, policies: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{upstream}\"]\n{upstream_policies}\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n{policies}\n"
    )
}

/// Good answers under overload and just after it, refusals under overload, and how often the
/// circuit opened by then.
struct Run {
    good: u64,
    refused: u64,
    after: u64,
    circuit_opened: u64,
}

/// One gateway with `upstream_policies` and `policies` through the scenario: moderate load
/// (the limiter learns the upstream's latency), then 4× as many connections as the adaptive
/// limit's start for long enough that a limiter reading the loop's own delay as the upstream's
/// would have cut the limit to its floor, then moderate load again.
async fn scenario(
    dir: &TempDir,
    name: &str,
    upstream: std::net::SocketAddr,
    upstream_policies: &str,
    policies: &str,
) -> Run {
    let path = dir.write(
        &format!("sekisho-{name}.toml"),
        &config(upstream, upstream_policies, policies),
    );
    let gateway = Sekisho::start(&binary(), &path);
    let url = gateway.url("/");
    drive(
        &url,
        16,
        Duration::from_millis(200),
        Duration::from_millis(800),
    )
    .await;
    let (good, refused) = drive(&url, 256, Duration::from_secs(2), Duration::from_secs(3)).await;
    let (after, _) = drive(&url, 16, Duration::from_millis(500), Duration::from_secs(1)).await;
    let circuits = get(&gateway.admin_url("/api/v1/circuits")).await.json();
    let circuit_opened = circuits["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["opened"].as_u64().unwrap())
        .sum();
    let metrics = get(&gateway.admin_url("/metrics")).await;
    for line in String::from_utf8_lossy(&metrics.body).lines().filter(|l| {
        !l.starts_with('#')
            && [
                "event_loop",
                "circuit_opened",
                "retries",
                "bulkhead_rejected",
                "shed",
            ]
            .iter()
            .any(|k| l.contains(k))
    }) {
        eprintln!("{name}: {line}");
    }
    Run {
        good,
        refused,
        after,
        circuit_opened,
    }
}

/// Asserts that `with` kept at least half the goodput of `bare`, under overload and after it.
fn assert_kept_goodput(what: &str, bare: &Run, with: &Run) {
    eprintln!(
        "overload: {} good without {what}, {} good and {} refused with it; after: {} and {}",
        bare.good, with.good, with.refused, bare.after, with.after
    );
    assert!(
        bare.good > 1000,
        "the bare gateway served {}: no load",
        bare.good
    );
    let ratio = with.good as f64 / bare.good as f64;
    assert!(
        ratio >= 0.5,
        "goodput under overload with {what} {} ({} refused) against {} without: {ratio:.2}x",
        with.good,
        with.refused,
        bare.good
    );
    let recovered = with.after as f64 / bare.after.max(1) as f64;
    assert!(
        recovered >= 0.5,
        "after the overload: {} good answers with {what}, {} without",
        with.after,
        bare.after
    );
}

const ADAPTIVE: &str =
    "[routes.adaptive_concurrency]\ninitial_limit = 64\nmin_limit = 5\nmax_limit = 2000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_gateway_keeps_its_goodput_with_adaptive_concurrency() {
    let _serial = SERIAL.lock().await;
    // In a process of its own: in this one it would queue behind the clients' load and be
    // slow in earnest.
    let upstream = Sekisho::start_upstream(&binary(), "fast");
    let dir = TempDir::new("overload");
    let bare = scenario(&dir, "bare", upstream.address, "", "").await;
    let shedding = scenario(&dir, "shedding", upstream.address, "", ADAPTIVE).await;
    assert_kept_goodput("adaptive concurrency", &bare, &shedding);
}

/// Item 4 of issue 14: the bulkhead's queue, the retries and their budget, and the circuit
/// breaker, all under a gateway saturated by its own work (not a slow upstream). The bulkhead
/// admits a quarter of the connections at once and queues the rest with a short wait; the
/// breaker judges calls slow from 20 ms; the retries have a short per-try timeout. A gateway
/// that read its own queueing as the upstream's slowness would time the queue out, open the
/// circuit and spend its budget retrying: mass failure out of saturation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_gateway_keeps_its_goodput_with_bulkhead_retries_and_circuit() {
    let _serial = SERIAL.lock().await;
    // In a process of its own: in this one it would queue behind the clients' load and be
    // slow in earnest.
    let upstream = Sekisho::start_upstream(&binary(), "fast");
    let dir = TempDir::new("overload-stack");
    let bare = scenario(&dir, "bare", upstream.address, "", "").await;
    let stack = scenario(
        &dir,
        "stack",
        upstream.address,
        "[upstreams.app.circuit_breaker]\nminimum_calls = 20\nwindow = \"2s\"\n\
         slow_call_threshold = \"20ms\"\nslow_call_rate_threshold = 0.5\n\
         [upstreams.app.bulkhead]\nmax_concurrent = 64\nmax_queued = 1024\nmax_wait = \"50ms\"\n",
        "[routes.retry]\nattempts = 3\nper_try_timeout = \"100ms\"\n",
    )
    .await;
    assert_kept_goodput("the policy stack", &bare, &stack);
    assert_eq!(
        stack.circuit_opened, 0,
        "the circuit of a fast upstream opened under the gateway's own overload"
    );
}

/// `[server.overload]`: while the gateway's own event loop runs further behind than
/// `max_loop_delay`, requests are refused before routing — a flood of requests for a path
/// with no route gets 503 `OVERLOADED` (not 404 `NO_ROUTE`) with `Connection: close` — and the
/// refusals stop by themselves once the flood is over. The bound is set absurdly low (1 ms) so
/// that a one-worker gateway under 256 connections passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_gateway_refuses_before_routing_and_closes() {
    let _serial = SERIAL.lock().await;
    // In a process of its own: in this one it would queue behind the clients' load and be
    // slow in earnest.
    let upstream = Sekisho::start_upstream(&binary(), "fast");
    let dir = TempDir::new("overload-guard");
    // The only route is under /app: every request of the flood is for a path with no route.
    let text = config(upstream.address, "", "")
        .replace(
            "[admin]",
            "[server.overload]\nmax_loop_delay = \"1ms\"\n[admin]",
        )
        .replace("path_prefix = \"/\"", "path_prefix = \"/app\"");
    let path = dir.write("sekisho.toml", &text);
    let gateway = Sekisho::start(&binary(), &path);
    let url = gateway.url("/no/such/route");

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let kept_open = Arc::new(AtomicU64::new(0));
    let unrouted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..256 {
        let (url, stop, refused, kept_open, unrouted) = (
            url.clone(),
            Arc::clone(&stop),
            Arc::clone(&refused),
            Arc::clone(&kept_open),
            Arc::clone(&unrouted),
        );
        tasks.push(tokio::spawn(async move {
            let http = client();
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(answer) = try_send(&http, "GET", &url, &[], Bytes::new()).await else {
                    continue;
                };
                match (answer.status, answer.error_code().as_str()) {
                    (503, "OVERLOADED") => {
                        if answer.header("connection") != Some("close") {
                            kept_open.fetch_add(1, Ordering::Relaxed);
                        }
                        if refused.fetch_add(1, Ordering::Relaxed) >= 200 {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    (404, "NO_ROUTE") => {
                        unrouted.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        }));
    }
    // Bounded: the flood ends after 200 refusals, or after 20 s at most.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let refused = refused.load(Ordering::Relaxed);
    eprintln!(
        "overload guard: {refused} refused, {} answered NO_ROUTE",
        unrouted.load(Ordering::Relaxed)
    );
    assert!(
        refused > 0,
        "no request was refused while 256 connections flooded a one-worker gateway with a 1 ms bound"
    );
    assert_eq!(
        kept_open.load(Ordering::Relaxed),
        0,
        "an OVERLOADED refusal kept its HTTP/1.1 connection open"
    );
    let metrics = get(&gateway.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let counter = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} is not exposed"))
            .parse()
            .unwrap()
    };
    let counted = counter("sekisho_overload_refused_total");
    assert!(
        counted >= refused as f64,
        "{counted} counted, {refused} seen"
    );
    // Decided from the head alone (no access log, HTTP/1.1): written before a request was built.
    let from_head = counter("sekisho_refused_from_head_total");
    assert!(
        from_head >= refused as f64,
        "{from_head} refused from the head, {refused} seen"
    );
    assert!(
        text.contains("sekisho_event_loop_delay_seconds"),
        "the loop's delay is exported"
    );
    // The flood is over: the guard lifts by itself (the probe's figure decays within a few
    // 10 ms probes); one client, one request at a time, until the route answers again.
    let http = client();
    let mut lifted = false;
    for _ in 0..200 {
        let answer = send(&http, "GET", &url, &[], Bytes::new()).await;
        if answer.status == 404 {
            lifted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(lifted, "still refused 4 s after the flood ended");
}
