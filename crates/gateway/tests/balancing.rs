//! Load balancing, health checks and failover through the gateway, against real upstreams over
//! real sockets: each algorithm's wiring, connect failures retried on another target, active
//! checks, outlier ejection and return, backups, panic modes, slow start, state across reload.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sekisho_load::ChaosState;
use sekisho_testkit::{chaos_upstream, client, get, send, InProcess, Upstream};

const BASE: &str =
    "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n";

/// A gateway with upstream `u` (targets and extra keys as given) behind route `/`.
async fn gateway(targets: &str, upstream_extra: &str) -> InProcess {
    let config = format!(
        "{BASE}\n[upstreams.u]\ntargets = [{targets}]\n{upstream_extra}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\ntimeout = \"5s\"\n"
    );
    InProcess::start(&config).await
}

/// A loopback port with nothing listening: every connect to it is refused.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn quoted(addresses: &[SocketAddr]) -> String {
    addresses
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn upstreams(names: &[&str]) -> Vec<Upstream> {
    let mut all = Vec::new();
    for name in names {
        all.push(chaos_upstream(name).await);
    }
    all
}

/// Which upstream answered each of `count` sequential GETs (its `x-upstream`), or the status
/// when the gateway answered itself.
async fn answered_by(gw: &InProcess, count: usize, headers: &[(&str, &str)]) -> Vec<String> {
    let http = client();
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        let answer = send(&http, "GET", &gw.url("/x"), headers, Bytes::new()).await;
        names.push(match answer.header("x-upstream") {
            Some(name) if answer.status == 200 => name.to_owned(),
            _ => format!("status {}", answer.status),
        });
    }
    names
}

fn tally(names: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for name in names {
        *counts.entry(name.clone()).or_insert(0) += 1;
    }
    counts
}

/// Waits until `condition` holds on the gateway's view of upstream `u`, up to 10 s.
async fn wait_for(gw: &InProcess, what: &str, condition: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
        if condition(&view[0]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn target(view: &serde_json::Value, address: SocketAddr) -> &serde_json::Value {
    view["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == address.to_string())
        .unwrap()
}

const FAILING: ChaosState = ChaosState {
    latency_ms: 0,
    error_rate: 1.0,
    hang: false,
    reset: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_interleaves_as_nginx_does() {
    let ups = upstreams(&["a", "b", "c"]).await;
    let targets = format!(
        "{{ address = \"{}\", weight = 5 }}, {{ address = \"{}\", weight = 1 }}, {{ address = \"{}\", weight = 1 }}",
        ups[0].address, ups[1].address, ups[2].address
    );
    let gw = gateway(&targets, "balance = \"weighted_round_robin\"").await;
    let names = answered_by(&gw, 14, &[]).await;
    assert_eq!(
        names.join(" "),
        "a a b a c a a a a b a c a a",
        "smooth weighted round robin spreads the light targets between the heavy one's turns"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_each_key_on_one_target() {
    let ups = upstreams(&["a", "b", "c"]).await;
    let addresses: Vec<SocketAddr> = ups.iter().map(|u| u.address).collect();
    let gw = gateway(
        &quoted(&addresses),
        "balance = \"consistent_hash\"\nhash_key = \"header:X-User\"",
    )
    .await;
    let mut used = std::collections::HashSet::new();
    for user in 0..30 {
        let id = format!("user-{user}");
        let names = answered_by(&gw, 3, &[("x-user", &id)]).await;
        assert!(names.iter().all(|n| n == &names[0]), "{id}: {names:?}");
        used.insert(names[0].clone());
    }
    assert!(used.len() >= 2, "30 keys all landed on {used:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_and_least_response_time_avoid_the_slow_target() {
    for balance in ["least_connections", "least_response_time"] {
        let ups = upstreams(&["slow", "fast"]).await;
        ups[0].handle.set(ChaosState {
            latency_ms: 200,
            ..ChaosState::default()
        });
        let addresses: Vec<SocketAddr> = ups.iter().map(|u| u.address).collect();
        let gw = gateway(&quoted(&addresses), &format!("balance = \"{balance}\"")).await;
        // Four clients at once, 15 requests each.
        let mut clients = Vec::new();
        for _ in 0..4 {
            let url = gw.url("/x");
            clients.push(tokio::spawn(async move {
                let http = client();
                let mut names = Vec::new();
                for _ in 0..15 {
                    let answer = send(&http, "GET", &url, &[], Bytes::new()).await;
                    assert_eq!(answer.status, 200);
                    names.push(answer.header("x-upstream").unwrap().to_owned());
                }
                names
            }));
        }
        let mut names = Vec::new();
        for c in clients {
            names.extend(c.await.unwrap());
        }
        let counts = tally(&names);
        let slow = counts.get("slow").copied().unwrap_or(0);
        // A balancer blind to load gives the slow target half (30). Counting, the slow one
        // gets a request only when it ties with the fast one: up to 11 of 60 seen on a loaded
        // two-core machine; the bound leaves room for that spread.
        assert!(
            slow <= 15,
            "{balance}: the slow target took {slow} of 60 requests: {counts:?}"
        );
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_on_another_target_with_its_body() {
    let dead = closed_port();
    let live = chaos_upstream("live").await;
    let gw = gateway(&quoted(&[dead, live.address]), "").await;
    let http = client();
    for i in 0..6 {
        let body = format!("payload {i}");
        let answer = send(&http, "POST", &gw.url("/echo"), &[], body.clone()).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.header("x-upstream"), Some("live"));
        assert_eq!(
            answer.body,
            body.as_bytes(),
            "the body went to the second try whole"
        );
        let answer = get(&gw.url("/x")).await;
        assert_eq!(answer.status, 200);
    }
    let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
    let dead_view = target(&view[0], dead);
    assert!(dead_view["picks"].as_u64().unwrap() >= 6, "{view:#}");
    assert!(dead_view["error_rate"].as_f64().unwrap() > 0.2, "{view:#}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_move_traffic_to_the_backup_and_give_it_back() {
    let ups = upstreams(&["primary", "backup"]).await;
    let targets = format!(
        "\"{}\", {{ address = \"{}\", backup = true }}",
        ups[0].address, ups[1].address
    );
    let gw = gateway(
        &targets,
        "[upstreams.u.health_check]\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n",
    )
    .await;
    assert!(answered_by(&gw, 5, &[])
        .await
        .iter()
        .all(|n| n == "primary"));

    ups[0].handle.set(FAILING);
    wait_for(&gw, "the primary to turn unhealthy", |u| {
        target(u, ups[0].address)["health"] == "unhealthy"
    })
    .await;
    let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
    assert_eq!(target(&view[0], ups[1].address)["eligible"], true);
    assert_eq!(
        target(&view[0], ups[0].address)["last_check"]["ok"],
        false,
        "{view:#}"
    );
    assert!(answered_by(&gw, 5, &[]).await.iter().all(|n| n == "backup"));

    ups[0].handle.set(ChaosState::default());
    wait_for(&gw, "the primary to be healthy again", |u| {
        target(u, ups[0].address)["health"] == "healthy"
    })
    .await;
    assert!(answered_by(&gw, 5, &[])
        .await
        .iter()
        .all(|n| n == "primary"));
    let metrics = gw.gateway.encode_metrics();
    assert!(
        metrics.contains(&format!(
            "sekisho_upstream_target_healthy{{upstream=\"u\",target=\"{}\"}} 1",
            ups[0].address
        )),
        "{metrics}"
    );
    assert!(metrics.contains("sekisho_health_checks_total{upstream=\"u\",result=\"failed\"}"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_healthy_target_panic_fails_fast_or_spreads() {
    for (panic, expect_upstream) in [("fail", false), ("spread", true)] {
        let ups = upstreams(&["a", "b"]).await;
        for u in &ups {
            u.handle.set(FAILING);
        }
        let addresses: Vec<SocketAddr> = ups.iter().map(|u| u.address).collect();
        let gw = gateway(
            &quoted(&addresses),
            &format!("panic = \"{panic}\"\n[upstreams.u.health_check]\ninterval = \"50ms\"\nunhealthy_threshold = 1\n"),
        )
        .await;
        wait_for(&gw, "both targets unhealthy", |u| {
            u["targets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["health"] == "unhealthy")
        })
        .await;
        let answer = get(&gw.url("/x")).await;
        if expect_upstream {
            // Spread: the request reaches a target (which answers its chaos 500).
            assert!(
                answer.header("x-upstream").is_some(),
                "{panic}: {:?}",
                answer.body
            );
            let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
            assert_eq!(view[0]["panic"], true);
        } else {
            assert_eq!(answer.status, 503);
            assert_eq!(answer.json()["error"]["code"], "NO_HEALTHY_UPSTREAM");
            assert!(answer.header("retry-after").is_some());
        }
        gw.stop().await;
    }
}

/// The view of target `address` in upstream `u`, now.
fn target_view(gw: &InProcess, address: SocketAddr) -> serde_json::Value {
    let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
    target(&view[0], address).clone()
}

/// On tokio's paused clock, time moves only when everything waits on a timer (or the test
/// advances it): the requests take no time, so an ejection's remaining time is exact, and its
/// end is reached by advancing the clock, to the millisecond.
#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_a_target_until_its_time_is_up() {
    let ups = upstreams(&["good", "bad"]).await;
    ups[1].handle.set(FAILING);
    let addresses: Vec<SocketAddr> = ups.iter().map(|u| u.address).collect();
    let gw = gateway(
        &quoted(&addresses),
        "[upstreams.u.outlier]\nconsecutive_failures = 3\nbase_ejection_time = \"400ms\"\nmax_ejection_percent = 50\n",
    )
    .await;
    // Round robin: the bad target gets every other request until its third failure in a row.
    let names = answered_by(&gw, 10, &[]).await;
    let failures = names.iter().filter(|n| n.as_str() == "status 500").count();
    assert_eq!(failures, 3, "{names:?}");
    assert!(names[6..].iter().all(|n| n == "good"), "{names:?}");
    let bad = target_view(&gw, ups[1].address);
    assert_eq!(bad["health"], "ejected", "{bad:#}");
    assert_eq!(bad["ejections"], 1);
    assert_eq!(bad["ejected_for_ms"], 400, "{bad:#}");

    // Fixed; a millisecond before the ejection ends it still holds, and at its end it is over.
    ups[1].handle.set(ChaosState::default());
    tokio::time::advance(Duration::from_millis(399)).await;
    let bad = target_view(&gw, ups[1].address);
    assert_eq!(
        (&bad["health"], &bad["ejected_for_ms"]),
        (&"ejected".into(), &1.into()),
        "{bad:#}"
    );
    assert!(answered_by(&gw, 4, &[]).await.iter().all(|n| n == "good"));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(target_view(&gw, ups[1].address)["health"], "healthy");
    // Back in rotation.
    let counts = tally(&answered_by(&gw, 10, &[]).await);
    assert_eq!(counts.get("bad"), Some(&5), "{counts:?}");
    let metrics = gw.gateway.encode_metrics();
    assert!(
        metrics.contains(&format!(
            "sekisho_upstream_target_ejections_total{{upstream=\"u\",target=\"{}\"}} 1",
            ups[1].address
        )),
        "{metrics}"
    );
    gw.stop().await;
}

/// On the paused clock, as above: the first ejection lasts exactly the base time, the second
/// exactly twice that.
#[tokio::test(start_paused = true)]
async fn repeated_ejections_last_longer_and_the_share_limit_holds() {
    let ups = upstreams(&["a", "b"]).await;
    for u in &ups {
        u.handle.set(FAILING);
    }
    let addresses: Vec<SocketAddr> = ups.iter().map(|u| u.address).collect();
    let gw = gateway(
        &quoted(&addresses),
        "[upstreams.u.outlier]\nconsecutive_failures = 1\nbase_ejection_time = \"300ms\"\nmax_ejection_percent = 50\nfailure_rate_margin = 1\n",
    )
    .await;
    answered_by(&gw, 4, &[]).await;
    // Both fail, but only half of the pool may be ejected.
    let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
    let ejected: Vec<&serde_json::Value> = view[0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["health"] == "ejected")
        .collect();
    assert_eq!(ejected.len(), 1, "{view:#}");
    let first = ejected[0]["address"].as_str().unwrap().to_owned();
    assert_eq!(ejected[0]["ejected_for_ms"], 300, "{view:#}");
    tokio::time::advance(Duration::from_millis(300)).await;
    let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
    assert!(
        view[0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["health"] != "ejected"),
        "the first ejection is over after its 300 ms: {view:#}"
    );
    // Only the target that was ejected before fails now: its second ejection lasts twice as long.
    for u in &ups {
        u.handle.set(ChaosState::default());
    }
    let index = ups
        .iter()
        .position(|u| u.address.to_string() == first)
        .unwrap();
    ups[index].handle.set(FAILING);
    answered_by(&gw, 4, &[]).await;
    let again = target_view(&gw, ups[index].address);
    assert_eq!(again["ejections"], 2, "{again:#}");
    assert_eq!(again["ejected_for_ms"], 600, "{again:#}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_failure_rate_stands_out_is_ejected() {
    let ups = upstreams(&["a", "b", "flaky"]).await;
    ups[2].handle.set(ChaosState {
        error_rate: 0.6,
        ..ChaosState::default()
    });
    let addresses: Vec<SocketAddr> = ups.iter().map(|u| u.address).collect();
    let gw = gateway(
        &quoted(&addresses),
        "[upstreams.u.outlier]\nconsecutive_failures = 1000\ninterval = \"300ms\"\nfailure_rate_minimum_requests = 10\nfailure_rate_margin = 0.3\nbase_ejection_time = \"30s\"\n",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        answered_by(&gw, 30, &[]).await;
        let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
        if target(&view[0], ups[2].address)["health"] == "ejected" {
            assert_eq!(target(&view[0], ups[0].address)["health"], "healthy");
            assert_eq!(target(&view[0], ups[1].address)["health"], "healthy");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ejected: {view:#}"
        );
    }
    let counts = tally(&answered_by(&gw, 20, &[]).await);
    assert_eq!(counts.get("flaky"), None, "{counts:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_back_in_service_ramps_up_over_slow_start() {
    let ups = upstreams(&["steady", "returning"]).await;
    let addresses: Vec<SocketAddr> = ups.iter().map(|u| u.address).collect();
    let gw = gateway(
        &quoted(&addresses),
        "slow_start = \"3s\"\n[upstreams.u.health_check]\ninterval = \"50ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n",
    )
    .await;
    ups[1].handle.set(FAILING);
    wait_for(&gw, "the target to go down", |u| {
        target(u, ups[1].address)["health"] == "unhealthy"
    })
    .await;
    ups[1].handle.set(ChaosState::default());
    wait_for(&gw, "the target to come back", |u| {
        target(u, ups[1].address)["health"] == "healthy"
    })
    .await;
    // Just back: well under its even share of 50 %.
    let early = tally(&answered_by(&gw, 100, &[]).await);
    let early_share = early.get("returning").copied().unwrap_or(0);
    assert!(early_share < 30, "early share {early_share} %: {early:?}");
    // Ramp over: the even share.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = tally(&answered_by(&gw, 100, &[]).await);
    assert_eq!(late.get("returning"), Some(&50), "{late:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_learnt_about_targets_survives_a_reload() {
    let ups = upstreams(&["good", "bad"]).await;
    ups[1].handle.set(FAILING);
    let addresses: Vec<SocketAddr> = ups.iter().map(|u| u.address).collect();
    let config = |timeout: &str| {
        format!(
            "{BASE}\n[upstreams.u]\ntargets = [{}]\n[upstreams.u.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"60s\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\ntimeout = \"{timeout}\"\n",
            quoted(&addresses)
        )
    };
    let gw = InProcess::start(&config("5s")).await;
    answered_by(&gw, 6, &[]).await;
    let before = serde_json::to_value(gw.gateway.upstreams()).unwrap();
    assert_eq!(target(&before[0], ups[1].address)["health"], "ejected");

    let reloaded = sekisho_config::parse(&config("6s"), "t.toml").unwrap();
    gw.gateway.reload_with(reloaded).unwrap();
    let after = serde_json::to_value(gw.gateway.upstreams()).unwrap();
    let bad = target(&after[0], ups[1].address);
    assert_eq!(bad["health"], "ejected", "{after:#}");
    assert_eq!(bad["ejections"], 1);
    assert_eq!(
        target(&after[0], ups[0].address)["picks"],
        target(&before[0], ups[0].address)["picks"]
    );
    assert!(answered_by(&gw, 6, &[]).await.iter().all(|n| n == "good"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_health_check_ends_an_ejection_unless_told_not_to() {
    for uneject in [true, false] {
        let ups = upstreams(&["good", "bad"]).await;
        let addresses: Vec<SocketAddr> = ups.iter().map(|u| u.address).collect();
        let gw = gateway(
            &quoted(&addresses),
            &format!(
                "[upstreams.u.health_check]\ninterval = \"50ms\"\nunhealthy_threshold = 1000\n[upstreams.u.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"60s\"\nuneject_on_health_check = {uneject}\n"
            ),
        )
        .await;
        ups[1].handle.set(FAILING);
        answered_by(&gw, 4, &[]).await;
        let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
        assert_eq!(
            target(&view[0], ups[1].address)["health"],
            "ejected",
            "{view:#}"
        );
        ups[1].handle.set(ChaosState::default());
        if uneject {
            wait_for(&gw, "a passing check to end the ejection", |u| {
                target(u, ups[1].address)["health"] == "healthy"
            })
            .await;
        } else {
            // Several passing checks later, the ejection still runs its 60 s.
            wait_for(&gw, "passing checks", |u| {
                target(u, ups[1].address)["last_check"]["ok"] == true
            })
            .await;
            let checks_before = ups[1].handle.requests();
            while ups[1].handle.requests() < checks_before + 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
            assert_eq!(
                target(&view[0], ups[1].address)["health"],
                "ejected",
                "{view:#}"
            );
        }
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_and_expected_statuses_decide_health() {
    let live = chaos_upstream("live").await;
    let dead = closed_port();
    let gw = gateway(
        &quoted(&[live.address, dead]),
        "[upstreams.u.health_check]\ntype = \"tcp\"\ninterval = \"50ms\"\nunhealthy_threshold = 1\n",
    )
    .await;
    wait_for(&gw, "the closed port to fail its TCP check", |u| {
        target(u, dead)["health"] == "unhealthy"
    })
    .await;
    let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
    let live_view = target(&view[0], live.address);
    assert_eq!(live_view["health"], "healthy");
    assert_eq!(live_view["last_check"]["detail"], "connected", "{view:#}");
    gw.stop().await;

    // An HTTP check that expects 204 fails on the upstream's 200.
    let gw = gateway(
        &quoted(&[live.address]),
        "[upstreams.u.health_check]\nexpected_statuses = [204]\ninterval = \"50ms\"\nunhealthy_threshold = 1\n",
    )
    .await;
    wait_for(&gw, "the 200 to fail a check expecting 204", |u| {
        target(u, live.address)["health"] == "unhealthy"
    })
    .await;
    let view = serde_json::to_value(gw.gateway.upstreams()).unwrap();
    assert_eq!(
        target(&view[0], live.address)["last_check"]["detail"],
        "status 200"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_primary_refuses_fails_over_to_the_backup_at_once() {
    let dead = closed_port();
    let backup = chaos_upstream("backup").await;
    // No health checks: only the failed connect tells the gateway the primary is gone.
    let gw = gateway(
        &format!(
            "\"{dead}\", {{ address = \"{}\", backup = true }}",
            backup.address
        ),
        "",
    )
    .await;
    let answer = get(&gw.url("/x")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("x-upstream"), Some("backup"));
    gw.stop().await;

    // With no backup and every target refusing, the answer is the connect error, not 503.
    let other_dead = closed_port();
    let gw = gateway(&quoted(&[dead, other_dead]), "").await;
    let answer = get(&gw.url("/x")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["error"]["code"], "UPSTREAM_ERROR");
    gw.stop().await;
}
