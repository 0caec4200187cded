//! Retries through the gateway against real upstreams: what is retried and where, what is not,
//! the buffered body sent again, the per-try timeout, the route's deadline over the backoffs, and
//! the budget that keeps retries from multiplying load when everything fails.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sekisho_load::ChaosState;
use sekisho_testkit::{chaos_upstream, client, get, send, InProcess};

const FAILING: ChaosState = ChaosState {
    latency_ms: 0,
    error_rate: 1.0,
    hang: false,
    reset: false,
};

async fn gateway(targets: &[std::net::SocketAddr], route_extra: &str, retry: &str) -> InProcess {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.u]\ntargets = [{}]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n{route_extra}\n\
         [routes.retry]\n{retry}\n",
        targets.join(", ")
    ))
    .await
}

/// The value of a counter sample in the gateway's metrics (0 when absent).
fn counter(gw: &InProcess, sample: &str) -> u64 {
    let text = gw.gateway.encode_metrics();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_status_is_retried_on_the_other_target() {
    let bad = chaos_upstream("bad").await;
    let good = chaos_upstream("good").await;
    bad.handle.set(FAILING);
    let gw = gateway(
        &[bad.address, good.address],
        "",
        "attempts = 2\nbackoff = \"1ms\"\nretry_on = [500]",
    )
    .await;
    for _ in 0..20 {
        let answer = get(&gw.url("/x")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-upstream"), Some("good"));
    }
    let first_tries_on_bad = bad.handle.requests();
    assert!(
        first_tries_on_bad >= 5,
        "round robin sends some to the bad target first"
    );
    assert_eq!(
        counter(&gw, "sekisho_retries_total{route=\"r\",reason=\"status\"}"),
        first_tries_on_bad
    );
    assert_eq!(good.handle.requests(), 20);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_answered_as_is_unless_the_route_allows_resending_it() {
    let bad = chaos_upstream("bad").await;
    let good = chaos_upstream("good").await;
    bad.handle.set(FAILING);
    let retry = "attempts = 2\nbackoff = \"1ms\"\nretry_on = [500]";
    let gw = gateway(&[bad.address, good.address], "", retry).await;
    let http = client();
    let mut failed = 0;
    for _ in 0..10 {
        let answer = send(&http, "POST", &gw.url("/x"), &[], "payload").await;
        failed += usize::from(answer.status == 500);
    }
    assert_eq!(
        failed, 5,
        "POST is not idempotent: the failures come back as they are"
    );
    gw.stop().await;

    // With retry_non_idempotent the body is buffered and sent again, byte for byte.
    let allowing = format!("{retry}\nretry_non_idempotent = true");
    let gw = gateway(&[bad.address, good.address], "", &allowing).await;
    let body = "x".repeat(10_000);
    for _ in 0..6 {
        let answer = send(&http, "POST", &gw.url("/x"), &[], body.clone()).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, body.as_bytes(), "the echo of the resent body");
    }
    assert!(counter(&gw, "sekisho_retries_total{route=\"r\",reason=\"status\"}") >= 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_the_buffer_is_streamed_and_not_resent() {
    let bad = chaos_upstream("bad").await;
    let good = chaos_upstream("good").await;
    bad.handle.set(FAILING);
    let gw = gateway(
        &[bad.address, good.address],
        "",
        "attempts = 2\nbackoff = \"1ms\"\nretry_on = [500]\nretry_non_idempotent = true\n\
         max_buffered_body_bytes = 100",
    )
    .await;
    let http = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            send(&http, "PUT", &gw.url("/x"), &[], "y".repeat(1000))
                .await
                .status,
        );
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 500, 500]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_try_is_abandoned_at_the_per_try_timeout_and_tried_elsewhere() {
    let slow = chaos_upstream("slow").await;
    let fast = chaos_upstream("fast").await;
    slow.handle.set(ChaosState {
        latency_ms: 5_000,
        ..ChaosState::default()
    });
    let gw = gateway(
        &[slow.address, fast.address],
        "timeout = \"10s\"",
        "attempts = 2\nbackoff = \"1ms\"\nretry_on = [\"timeout\"]\nper_try_timeout = \"100ms\"",
    )
    .await;
    for _ in 0..6 {
        let answer = get(&gw.url("/x")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-upstream"), Some("fast"));
    }
    assert_eq!(
        counter(&gw, "sekisho_retries_total{route=\"r\",reason=\"timeout\"}"),
        3
    );
    gw.stop().await;
}

/// On tokio's paused clock, time moves only when everything waits on a timer: the requests take
/// no time, and the backoffs take exactly theirs. The tries fall at exactly 0, 200 and 400 ms; a
/// fourth would start at 600 ms, past the 500 ms deadline, so there are exactly three, however
/// loaded the machine is.
#[tokio::test(start_paused = true)]
async fn the_routes_deadline_bounds_the_backoffs() {
    let bad = chaos_upstream("bad").await;
    bad.handle.set(FAILING);
    let gw = gateway(
        &[bad.address],
        "timeout = \"500ms\"",
        "attempts = 10\nbackoff = \"200ms\"\nmax_backoff = \"200ms\"\njitter = \"none\"\nretry_on = [500]",
    )
    .await;
    let started = tokio::time::Instant::now();
    let answer = get(&gw.url("/x")).await;
    assert_eq!(answer.status, 500, "the last failure, answered as it is");
    assert_eq!(bad.handle.requests(), 3, "tries");
    assert_eq!(
        counter(&gw, "sekisho_retries_total{route=\"r\",reason=\"status\"}"),
        2
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(400),
        "two backoffs of 200 ms on the paused clock"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_keeps_retries_within_its_ratio_when_everything_fails() {
    let bad = chaos_upstream("bad").await;
    bad.handle.set(FAILING);
    let gw = gateway(
        &[bad.address],
        "",
        "attempts = 5\nbackoff = \"1ms\"\nmax_backoff = \"1ms\"\nretry_on = [500]\n\
         budget_ratio = 0.2\nbudget_min_per_second = 0",
    )
    .await;
    let requests = 100;
    for _ in 0..requests {
        assert_eq!(get(&gw.url("/x")).await.status, 500);
    }
    let sent = bad.handle.requests();
    // Without a budget: 500 tries. With it: the 100 requests and at most 20 % more.
    assert!(
        sent <= requests + 20,
        "{sent} tries for {requests} requests"
    );
    assert!(
        sent >= requests + 15,
        "the budget that is there is used: {sent}"
    );
    assert!(counter(&gw, "sekisho_retry_budget_exhausted_total{route=\"r\"}") > 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_retry_block_a_failing_status_is_not_retried() {
    let bad = chaos_upstream("bad").await;
    bad.handle.set(FAILING);
    let gw = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.u]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        bad.address
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/x")).await.status, 500);
    }
    assert_eq!(bad.handle.requests(), 5);
    gw.stop().await;
}
