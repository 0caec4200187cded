//! The bulkhead of an upstream, through the gateway with a real, slow upstream: beyond its
//! slots and queue a request is refused at once with BULKHEAD_FULL; a queued one waits at most
//! `max_wait`; other upstreams are not touched.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sekisho_load::ChaosState;
use sekisho_testkit::{chaos_upstream, get, InProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bulkhead_refuses_at_once_and_leaves_other_upstreams_alone() {
    let slow = chaos_upstream("slow").await;
    let other = chaos_upstream("other").await;
    slow.handle.set(ChaosState {
        latency_ms: 2_000,
        ..ChaosState::default()
    });
    let gw = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.slow]\ntargets = [\"{}\"]\n[upstreams.slow.bulkhead]\nmax_concurrent = 2\nmax_queued = 1\nmax_wait = \"100ms\"\n\
         [upstreams.other]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"slow\"\ntimeout = \"10s\"\n\
         [[routes]]\nname = \"other\"\npath_prefix = \"/\"\nupstream = \"other\"\n",
        slow.address, other.address
    ))
    .await;
    // Two requests take both slots.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = gw.url("/slow");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    while slow.handle.requests() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The third waits in the queue for max_wait, then is refused; while it waits, a fourth
    // finds the queue full and is refused at once.
    let queued = tokio::spawn({
        let url = gw.url("/slow");
        async move { get(&url).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
        let slow_view = view
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "slow")
            .unwrap()
            .clone();
        if slow_view["bulkhead"]["queued"] == 1 {
            assert_eq!(slow_view["bulkhead"]["in_use"], 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing queued: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let refused = get(&gw.url("/slow")).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "BULKHEAD_FULL");
    let queued = queued.await.unwrap();
    assert_eq!(queued.status, 503);
    assert_eq!(queued.json()["error"]["code"], "BULKHEAD_FULL");
    assert_eq!(
        slow.handle.requests(),
        2,
        "refused requests never reached the upstream"
    );
    // Another upstream is not touched by the slow one's bulkhead.
    assert_eq!(get(&gw.url("/other")).await.status, 200);
    for request in held {
        assert_eq!(request.await.unwrap().status, 200);
    }
    let metrics = gw.gateway.encode_metrics();
    assert!(
        metrics.contains("sekisho_bulkhead_rejected_total{upstream=\"slow\"} 2"),
        "{metrics}"
    );
    gw.stop().await;
}
