//! Load shedding by a route's adaptive concurrency limit, through the gateway with a real chaos
//! upstream: when the upstream slows, the limit shrinks and what does not fit is shed at once
//! with 503 OVERLOADED and `Retry-After`; a route without the limit is untouched; when latency
//! returns to normal the limit grows again. A timeout is a drop for AIMD.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sekisho_load::ChaosState;
use sekisho_testkit::{chaos_upstream, get, raw_exchange, InProcess};
use tokio::time::Instant;

/// The value of `metric` for `route` in the gateway's metrics.
fn route_metric(gw: &InProcess, metric: &str, route: &str) -> Option<f64> {
    let text = gw.gateway.encode_metrics();
    let prefix = format!("{metric}{{route=\"{route}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

/// Polls `metric` until `wanted` holds for it, for at most `within`; the last value otherwise.
async fn await_metric(
    gw: &InProcess,
    metric: &str,
    route: &str,
    within: Duration,
    wanted: impl Fn(f64) -> bool,
) -> Result<f64, Option<f64>> {
    let deadline = Instant::now() + within;
    loop {
        let value = route_metric(gw, metric, route);
        if value.is_some_and(&wanted) {
            return Ok(value.unwrap_or_default());
        }
        if Instant::now() >= deadline {
            return Err(value);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `callers` concurrent loops of GETs to `path` saw, until `stop` is set (each loop makes
/// at most `max_each` requests).
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU32>,
    overloaded: Arc<AtomicU32>,
    other: Arc<AtomicU32>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(gw: &InProcess, path: &str, callers: usize, max_each: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU32::new(0));
        let overloaded = Arc::new(AtomicU32::new(0));
        let other = Arc::new(AtomicU32::new(0));
        let tasks = (0..callers)
            .map(|_| {
                let url = gw.url(path);
                let (stop, ok, overloaded, other) = (
                    Arc::clone(&stop),
                    Arc::clone(&ok),
                    Arc::clone(&overloaded),
                    Arc::clone(&other),
                );
                tokio::spawn(async move {
                    for _ in 0..max_each {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let answer = get(&url).await;
                        match answer.status {
                            200 => ok.fetch_add(1, Ordering::Relaxed),
                            503 if answer.error_code() == "OVERLOADED" => {
                                assert_eq!(answer.header("retry-after"), Some("1"));
                                overloaded.fetch_add(1, Ordering::Relaxed);
                                // A shed caller backs off a little, as Retry-After asks.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                0
                            }
                            _ => other.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            overloaded,
            other,
            tasks,
        }
    }

    /// Stops the loops and counts what they saw: answered, shed, anything else.
    async fn finish(self) -> (u32, u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    /// Lets every loop run to its end.
    async fn join(self) -> (u32, u32, u32) {
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.overloaded.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowing_upstream_shrinks_the_limit_sheds_the_excess_and_the_limit_recovers() {
    let api = chaos_upstream("api").await;
    let plain = chaos_upstream("plain").await;
    api.handle.set(ChaosState {
        latency_ms: 20,
        ..ChaosState::default()
    });
    let gw = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [server.adaptive_concurrency]\ninitial_limit = 12\nmin_limit = 2\nmax_limit = 64\n\
         window = \"50ms\"\nmin_samples = 5\n\
         [upstreams.api]\ntargets = [\"{}\"]\n\
         [upstreams.plain]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"api\"\ntimeout = \"10s\"\n\
         [[routes]]\nname = \"plain\"\npath_prefix = \"/\"\nupstream = \"plain\"\n\
         [routes.adaptive_concurrency]\nenabled = false\n",
        api.address, plain.address
    ))
    .await;
    assert_eq!(
        route_metric(&gw, "sekisho_adaptive_concurrency_limit", "api"),
        Some(12.0)
    );
    assert_eq!(
        route_metric(&gw, "sekisho_adaptive_concurrency_limit", "plain"),
        None,
        "the route that turned it off has no limit"
    );

    // Healthy: 6 callers, well within the limit; the long-run latency is learnt.
    let warm = Traffic::start(&gw, "/api", 6, 40);
    let (ok, overloaded, other) = warm.join().await;
    assert!(
        ok > 0 && overloaded == 0 && other == 0,
        "{ok} {overloaded} {other}"
    );
    let healthy_limit = route_metric(&gw, "sekisho_adaptive_concurrency_limit", "api").unwrap();

    // The upstream slows twentyfold under 24 callers: the limit shrinks, the excess is shed.
    api.handle.set(ChaosState {
        latency_ms: 400,
        ..ChaosState::default()
    });
    let storm = Traffic::start(&gw, "/api", 24, 400);
    let shrunk = await_metric(
        &gw,
        "sekisho_adaptive_concurrency_limit",
        "api",
        Duration::from_secs(30),
        |limit| limit <= (healthy_limit * 0.6).floor(),
    )
    .await;
    // Meanwhile the route without a limit answers at once.
    let plain_answer = get(&gw.url("/plain")).await;
    assert_eq!(plain_answer.status, 200);
    assert!(shrunk.is_ok(), "limit {shrunk:?}, healthy {healthy_limit}");
    let floor = shrunk.unwrap_or_default();

    // Back to normal: the limit grows again.
    api.handle.set(ChaosState {
        latency_ms: 20,
        ..ChaosState::default()
    });
    let grown = await_metric(
        &gw,
        "sekisho_adaptive_concurrency_limit",
        "api",
        Duration::from_secs(30),
        |limit| limit >= floor + 4.0,
    )
    .await;
    let (ok, overloaded, other) = storm.finish().await;
    assert!(
        grown.is_ok(),
        "limit {grown:?} after recovery, floor {floor}"
    );
    assert!(overloaded > 0, "nothing was shed ({ok} ok)");
    assert_eq!(other, 0, "only answers and OVERLOADED");
    let shed = route_metric(&gw, "sekisho_shed_total", "api").unwrap();
    assert_eq!(shed, f64::from(overloaded));
    assert_eq!(
        route_metric(&gw, "sekisho_adaptive_concurrency_in_flight", "api"),
        Some(0.0)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_drops_that_cut_an_aimd_limit() {
    let api = chaos_upstream("api").await;
    api.handle.set(ChaosState {
        latency_ms: 300,
        ..ChaosState::default()
    });
    let gw = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.api]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\ntimeout = \"50ms\"\n\
         [routes.adaptive_concurrency]\nalgorithm = \"aimd\"\nbackoff_ratio = 0.5\n\
         initial_limit = 32\nmin_limit = 1\nwindow = \"20ms\"\nmin_samples = 4\n",
        api.address
    ))
    .await;
    let traffic = Traffic::start(&gw, "/", 8, 30);
    let cut = await_metric(
        &gw,
        "sekisho_adaptive_concurrency_limit",
        "api",
        Duration::from_secs(20),
        |limit| limit <= 4.0,
    )
    .await;
    // The callers go on until the cut limit has shed one of them (stopping them the moment the
    // cut is seen could leave no call that met it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while traffic.overloaded.load(Ordering::Relaxed) == 0 && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (ok, overloaded, timed_out) = traffic.finish().await;
    assert!(cut.is_ok(), "limit {cut:?}");
    assert_eq!(ok, 0);
    assert!(timed_out > 0 && overloaded > 0, "{timed_out} {overloaded}");
    gw.stop().await;
}

/// The answer of a raw exchange without its `date` field (the one part that may differ).
fn without_date(answer: &str) -> String {
    answer
        .split("\r\n")
        .filter(|line| !line.starts_with("date: "))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Waits until `in_flight` calls hold a place under the route `api`'s limit (10 s at most).
async fn await_in_flight(gw: &InProcess, in_flight: f64) {
    let seen = await_metric(
        gw,
        "sekisho_adaptive_concurrency_in_flight",
        "api",
        Duration::from_secs(10),
        |n| n == in_flight,
    )
    .await;
    assert!(seen.is_ok(), "in flight: {seen:?}, awaited {in_flight}");
}

/// Refusals decided from the head so far (`sekisho_refused_from_head_total`).
fn refused_from_head(gw: &InProcess) -> Option<f64> {
    let text = gw.gateway.encode_metrics();
    text.lines()
        .find_map(|line| line.strip_prefix("sekisho_refused_from_head_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
}

/// Asks for `path` (one request, `Connection: close`) of a gateway whose route's limit is
/// full: the raw answer, a 503 `OVERLOADED`, after which `from_head` refusals have been
/// decided from the head (`why` otherwise).
async fn shed(gw: &InProcess, path: &'static str, from_head: f64, why: &str) -> String {
    let address = gw.address;
    let answer = tokio::task::spawn_blocking(move || {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: a\r\nX-Request-Id: same-id\r\nConnection: close\r\n\r\n"
        );
        raw_exchange(address, request.as_bytes(), Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
            && answer.contains("\"code\":\"OVERLOADED\""),
        "{answer}"
    );
    assert_eq!(refused_from_head(gw), Some(from_head), "{why}");
    answer
}

/// Once a route's limit has shed, a shed that needs nothing but the head (HTTP/1.1, no access
/// log, no step before the limit) is written before any request is built (`proxy::early`): the
/// same bytes as the steps' own shed, counted the same way, and the connection carries on. A
/// route that matches headers first makes the gateway read the request the usual way; a limit
/// with room again sends the requests the usual way until it sheds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_limit_refuses_from_the_head_with_the_answer_the_steps_give() {
    let api = chaos_upstream("api").await;
    api.handle.set(ChaosState {
        hang: true,
        ..ChaosState::default()
    });
    let gw = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.api]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"tagged\"\npath_prefix = \"/late\"\nupstream = \"api\"\n\
         [routes.match_headers]\nx-tag = \"*\"\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\ntimeout = \"60s\"\n\
         [routes.adaptive_concurrency]\ninitial_limit = 1\nmin_limit = 1\nmax_limit = 1\n",
        api.address
    ))
    .await;
    // One call holds the only place.
    let held_url = gw.url("/held");
    let held = tokio::spawn(async move { get(&held_url).await });
    await_in_flight(&gw, 1.0).await;
    assert_eq!(refused_from_head(&gw), Some(0.0));
    let address = gw.address;
    // `/late/x` could be the tagged route's, were a header there: read the usual way, shed by
    // the limit. That first shed lets the next ones be decided from their heads.
    let usual = shed(
        &gw,
        "/late/x",
        0.0,
        "a header-matched path was refused from the head",
    )
    .await;
    let early = shed(&gw, "/x", 1.0, "the shed was not decided from the head").await;
    assert_eq!(without_date(&early), without_date(&usual));
    assert_eq!(route_metric(&gw, "sekisho_shed_total", "api"), Some(2.0));
    // Both recorded as the route's 5xx answers.
    let text = gw.gateway.encode_metrics();
    let answered_5xx: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.starts_with("sekisho_requests_total{")
                && line.contains("route=\"api\"")
                && line.contains("class=\"5xx\"")
        })
        .collect();
    assert_eq!(answered_5xx.len(), 1, "{answered_5xx:?}");
    assert!(answered_5xx[0].ends_with(" 2"), "{answered_5xx:?}");

    // Kept alive: two refusals pipelined on one connection both come back, and a HEAD's has no
    // body.
    let pipelined = tokio::task::spawn_blocking(move || {
        raw_exchange(
            address,
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nHEAD /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap();
    assert_eq!(pipelined.matches("HTTP/1.1 503 ").count(), 2, "{pipelined}");
    let (_, head_answer) = pipelined.rsplit_once("HTTP/1.1 503 ").unwrap();
    assert!(head_answer.ends_with("\r\n\r\n"), "{head_answer}");
    assert!(!head_answer.contains("content-length"), "{head_answer}");
    assert_eq!(refused_from_head(&gw), Some(3.0));

    // The place freed: the next request finds room (and stops the looking), takes the place
    // and waits on the upstream; the one after is shed the usual way again, and the next from
    // its head.
    held.abort();
    await_in_flight(&gw, 0.0).await;
    let waiting = tokio::task::spawn_blocking(move || {
        raw_exchange(
            address,
            b"GET /waits HTTP/1.1\r\nHost: a\r\n\r\n",
            Duration::from_secs(3),
        )
    });
    await_in_flight(&gw, 1.0).await;
    shed(
        &gw,
        "/z",
        3.0,
        "refused from the head after a look found room",
    )
    .await;
    shed(&gw, "/w", 4.0, "not refused from the head after a new shed").await;
    assert_eq!(route_metric(&gw, "sekisho_shed_total", "api"), Some(6.0));
    let _ = waiting.await;
    gw.stop().await;
}
