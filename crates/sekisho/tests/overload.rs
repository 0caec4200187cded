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
use sekisho_testkit::{chaos_upstream, client, try_send, Sekisho, TempDir};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

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
                    _ => refused.fetch_add(1, Ordering::Relaxed),
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

fn config(upstream: std::net::SocketAddr, shedding: bool) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{upstream}\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n"
    );
    if shedding {
        text.push_str(
            "[routes.adaptive_concurrency]\ninitial_limit = 64\nmin_limit = 5\nmax_limit = 2000\n",
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_gateway_keeps_its_goodput_with_adaptive_concurrency() {
    let upstream = chaos_upstream("fast").await;
    let dir = TempDir::new("overload");
    let mut results = Vec::new();
    for shedding in [false, true] {
        let path = dir.write(
            &format!("sekisho-{shedding}.toml"),
            &config(upstream.address, shedding),
        );
        let gateway = Sekisho::start(&binary(), &path);
        let url = gateway.url("/");
        // Moderate load first (the limiter learns the upstream's latency), then 4× as many
        // connections as the initial limit for long enough that a limiter reading the loop's
        // own delay as the upstream's would have cut the limit to its floor.
        drive(
            &url,
            16,
            Duration::from_millis(200),
            Duration::from_millis(800),
        )
        .await;
        let overload = drive(&url, 256, Duration::from_secs(2), Duration::from_secs(3)).await;
        let after = drive(&url, 16, Duration::from_millis(500), Duration::from_secs(1)).await;
        results.push((shedding, overload, after));
    }
    let (_, (bare_good, _), (bare_after, _)) = results[0];
    let (_, (shed_good, shed_refused), (shed_after, _)) = results[1];
    eprintln!(
        "overload: {bare_good} good without shedding, {shed_good} good and {shed_refused} \
         refused with it; after: {bare_after} and {shed_after}"
    );
    assert!(
        bare_good > 1000,
        "the bare gateway served {bare_good}: no load"
    );
    let ratio = shed_good as f64 / bare_good as f64;
    assert!(
        ratio >= 0.5,
        "goodput under overload with adaptive concurrency {shed_good} ({shed_refused} refused) \
         against {bare_good} without: {ratio:.2}x"
    );
    let recovered = shed_after as f64 / bare_after.max(1) as f64;
    assert!(
        recovered >= 0.5,
        "after the overload: {shed_after} good answers with shedding, {bare_after} without"
    );
}
