//! The circuit breaker of an upstream, through the gateway with a real upstream: it opens on
//! failures and answers CIRCUIT_OPEN at once, probes after `open_for`, closes by itself when the
//! probes pass, and obeys the operator.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sekisho_load::ChaosState;
use sekisho_testkit::{chaos_upstream, get, InProcess};

const FAILING: ChaosState = ChaosState {
    latency_ms: 0,
    error_rate: 1.0,
    hang: false,
    reset: false,
};

async fn gateway(target: std::net::SocketAddr) -> InProcess {
    InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.u]\ntargets = [\"{target}\"]\n\
         [upstreams.u.circuit_breaker]\nwindow_calls = 4\nminimum_calls = 4\nfailure_rate_threshold = 0.5\nopen_for = \"400ms\"\nhalf_open_calls = 2\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n"
    ))
    .await
}

fn state(gw: &InProcess) -> String {
    gw.gateway.circuits()[0].state.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_on_failures_rejects_at_once_and_closes_through_half_open() {
    let upstream = chaos_upstream("u").await;
    upstream.handle.set(FAILING);
    let gw = gateway(upstream.address).await;
    for _ in 0..4 {
        assert_eq!(get(&gw.url("/x")).await.status, 500);
    }
    assert_eq!(state(&gw), "open");
    let reached = upstream.handle.requests();
    let rejected = get(&gw.url("/x")).await;
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.json()["error"]["code"], "CIRCUIT_OPEN");
    assert_eq!(rejected.header("retry-after"), Some("1"));
    assert_eq!(
        upstream.handle.requests(),
        reached,
        "an open circuit sends nothing upstream"
    );

    // The upstream recovers; after open_for the circuit lets two probes through and closes.
    upstream.handle.set(ChaosState::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state(&gw) != "half_open" {
        assert!(tokio::time::Instant::now() < deadline, "never half-open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    assert_eq!(state(&gw), "closed");
    let transitions: Vec<&str> = gw.gateway.circuits()[0]
        .transitions
        .iter()
        .map(|t| t.to)
        .collect();
    assert_eq!(transitions, ["open", "half_open", "closed"]);
    let metrics = gw.gateway.encode_metrics();
    assert!(
        metrics.contains("sekisho_circuit_state{upstream=\"u\",state=\"closed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sekisho_circuit_opened_total{upstream=\"u\"} 1"),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_forces_it_open_and_resets_it() {
    let upstream = chaos_upstream("u").await;
    let gw = gateway(upstream.address).await;
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    let view = gw.gateway.circuit_action("u", "force_open").unwrap();
    assert_eq!(view.state, "forced_open");
    let rejected = get(&gw.url("/x")).await;
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.json()["error"]["code"], "CIRCUIT_OPEN");
    gw.gateway.circuit_action("u", "reset").unwrap();
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    assert!(gw.gateway.circuit_action("nope", "reset").is_err());
    assert!(gw.gateway.circuit_action("u", "explode").is_err());
    gw.stop().await;
}

/// The gateway on a current-thread runtime whose thread a busy task holds 30 ms at a time (its
/// own saturation), the upstream on runtime threads of its own, answering at once: every call
/// takes longer than the breaker's 20 ms slow-call threshold because of the gateway, and none
/// may count as slow — a saturated gateway must not open a healthy upstream's circuit. With a
/// slow upstream instead (the control), the same calls are slow.
#[test]
fn the_gateways_own_saturation_is_not_a_slow_upstream() {
    let upstreams = tokio::runtime::Runtime::new().unwrap();
    let upstream = upstreams.block_on(chaos_upstream("u"));
    let gateway = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let slow_calls = |busy: bool, latency_ms: u64| {
        upstream.handle.set(ChaosState {
            latency_ms,
            ..ChaosState::default()
        });
        gateway.block_on(async {
            let gw = InProcess::start(&format!(
                "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [upstreams.u]\ntargets = [\"{}\"]\n\
                 [upstreams.u.circuit_breaker]\nwindow_calls = 100\nminimum_calls = 100\n\
                 slow_call_threshold = \"20ms\"\nslow_call_rate_threshold = 0.5\n\
                 [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
                upstream.address
            ))
            .await;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let hog = busy.then(|| {
                let stop = std::sync::Arc::clone(&stop);
                tokio::spawn(async move {
                    // Bounded: at most 10 s of holding the thread.
                    for _ in 0..333 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(30));
                        tokio::task::yield_now().await;
                    }
                })
            });
            // The busy loop runs a while before the calls, as a saturation does: the gateway's
            // measure of its own delay has caught up by then.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let address = gw.address;
            let statuses = tokio::task::spawn_blocking(move || {
                (0..12)
                    .map(|_| {
                        let answer = sekisho_testkit::raw_exchange(
                            address,
                            b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                            Duration::from_secs(10),
                        );
                        sekisho_testkit::raw_status(&answer)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(hog) = hog {
                hog.await.unwrap();
            }
            assert!(statuses.iter().all(|s| *s == Some(200)), "{statuses:?}");
            let slow = gw.gateway.circuits()[0].slow_calls;
            gw.stop().await;
            slow
        })
    };
    assert_eq!(
        slow_calls(true, 0),
        0,
        "calls judged slow for the gateway's own delay"
    );
    assert_eq!(
        slow_calls(false, 40),
        12,
        "a slow upstream's calls are slow"
    );
}
