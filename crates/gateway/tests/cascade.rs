//! The founding failure, under concurrent load: one dependency slows from 100 ms to 5 s. The
//! other route keeps answering; the slow one answers UPSTREAM_TIMEOUT, then BULKHEAD_FULL or
//! CIRCUIT_OPEN at once; when the dependency recovers, the circuit closes through half-open by
//! itself. (The figures of this scenario — latencies, time to open, time to recover — are
//! measured by `examples/cascade.rs` and recorded in docs/cascade.md, not asserted here.)
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use sekisho_load::ChaosState;
use sekisho_testkit::{chaos_upstream, client, try_send, InProcess};

const WORKERS: usize = 8;

fn latency(ms: u64) -> ChaosState {
    ChaosState {
        latency_ms: ms,
        ..ChaosState::default()
    }
}

/// Every worker asks for an order, then a payment, `rounds` times; the answers' codes ("200" or
/// the error code) are counted per route.
async fn load(gw: &InProcess, rounds: usize) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let orders_url = gw.url("/orders/1");
        let payments_url = gw.url("/payments/1");
        workers.push(tokio::spawn(async move {
            let http = client();
            let mut answers = Vec::new();
            for _ in 0..rounds {
                for (route, url) in [("orders", &orders_url), ("payments", &payments_url)] {
                    let answer = try_send(&http, "GET", url, &[], "").await.unwrap();
                    let code = if answer.status == 200 {
                        "200".to_owned()
                    } else {
                        answer.error_code()
                    };
                    answers.push((route, code));
                }
            }
            answers
        }));
    }
    let (mut orders, mut payments) = (BTreeMap::new(), BTreeMap::new());
    for worker in workers {
        for (route, code) in worker.await.unwrap() {
            let counts = if route == "orders" {
                &mut orders
            } else {
                &mut payments
            };
            *counts.entry(code).or_insert(0) += 1;
        }
    }
    (orders, payments)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_dependency_is_cut_off_and_the_rest_keeps_serving() {
    let orders = chaos_upstream("orders").await;
    let payments = chaos_upstream("payments").await;
    payments.handle.set(latency(100));
    let gw = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.orders]\ntargets = [\"{}\"]\n\
         [upstreams.payments]\ntargets = [\"{}\"]\n\
         [upstreams.payments.circuit_breaker]\nwindow_calls = 10\nminimum_calls = 5\n\
         failure_rate_threshold = 0.5\nopen_for = \"300ms\"\nhalf_open_calls = 2\n\
         [upstreams.payments.bulkhead]\nmax_concurrent = 4\nmax_queued = 8\nmax_wait = \"800ms\"\n\
         [[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"orders\"\ntimeout = \"2s\"\n\
         [[routes]]\nname = \"payments\"\npath_prefix = \"/payments\"\nupstream = \"payments\"\ntimeout = \"1s\"\n",
        orders.address, payments.address
    ))
    .await;

    // Before: everything answers.
    let (before_orders, before_payments) = load(&gw, 3).await;
    assert_eq!(before_orders.get("200"), Some(&(WORKERS * 3)));
    assert_eq!(
        before_payments.get("200"),
        Some(&(WORKERS * 3)),
        "{before_payments:?}"
    );

    // The dependency slows to 5 s.
    payments.handle.set(latency(5_000));
    let reached_before = payments.handle.requests();
    let (during_orders, during_payments) = load(&gw, 20).await;
    assert_eq!(
        during_orders.get("200"),
        Some(&(WORKERS * 20)),
        "the healthy route is unaffected: {during_orders:?}"
    );
    let allowed = ["UPSTREAM_TIMEOUT", "BULKHEAD_FULL", "CIRCUIT_OPEN"];
    assert!(
        during_payments
            .keys()
            .all(|code| allowed.contains(&code.as_str())),
        "{during_payments:?}"
    );
    assert!(
        during_payments.contains_key("UPSTREAM_TIMEOUT"),
        "{during_payments:?}"
    );
    assert!(
        during_payments.contains_key("CIRCUIT_OPEN"),
        "{during_payments:?}"
    );
    let reached = payments.handle.requests() - reached_before;
    assert!(
        reached < (WORKERS * 20 / 4) as u64,
        "the open circuit and the bulkhead keep most calls off the slow dependency: {reached} of {}",
        WORKERS * 20
    );
    let circuit = gw
        .gateway
        .circuits()
        .into_iter()
        .find(|c| &*c.name == "payments")
        .unwrap();
    assert!(circuit.transitions.iter().any(|t| t.to == "open"));

    // The dependency recovers: traffic alone brings the circuit back through half-open.
    payments.handle.set(ChaosState::default());
    let http = client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = try_send(&http, "GET", &gw.url("/payments/1"), &[], "")
            .await
            .unwrap();
        let circuit = gw
            .gateway
            .circuits()
            .into_iter()
            .find(|c| &*c.name == "payments")
            .unwrap();
        if circuit.state == "closed" && answer.status == 200 {
            let last: Vec<&str> = circuit
                .transitions
                .iter()
                .rev()
                .take(2)
                .map(|t| t.to)
                .collect();
            assert_eq!(last, ["closed", "half_open"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the circuit never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (after_orders, after_payments) = load(&gw, 2).await;
    assert_eq!(after_orders.get("200"), Some(&(WORKERS * 2)));
    assert_eq!(after_payments.get("200"), Some(&(WORKERS * 2)));
    gw.stop().await;
}
