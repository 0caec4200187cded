//! A target killed mid-traffic, with real processes: three `sekisho upstream` processes behind a
//! `sekisho run`, four clients in a loop, and one upstream killed with SIGKILL.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sekisho_testkit::{client, get, try_send, Sekisho, TempDir};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_mid_traffic_costs_at_most_the_threshold_then_nothing() {
    let mut upstreams: Vec<Sekisho> = ["a", "b", "c"]
        .iter()
        .map(|name| Sekisho::start_upstream(&binary(), name))
        .collect();
    let targets: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.address))
        .collect();
    let dir = TempDir::new("failover");
    let threshold = 3;
    let path = dir.write(
        "sekisho.toml",
        &format!(
            r#"[server]
listen = "127.0.0.1:0"
access_log = false
[admin]
listen = "127.0.0.1:0"

[upstreams.u]
targets = [{}]
[upstreams.u.health_check]
interval = "200ms"
unhealthy_threshold = 2
[upstreams.u.outlier]
consecutive_failures = {threshold}
base_ejection_time = "30s"

[[routes]]
name = "r"
path_prefix = "/"
upstream = "u"
timeout = "5s"
"#,
            targets.join(", ")
        ),
    );
    let gateway = Sekisho::start(&binary(), &path);

    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    // (ended after the kill began?, status or transport error) of every failed request.
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut loaders = Vec::new();
    for _ in 0..4 {
        let url = gateway.url("/load");
        let (stop, killed, answered, failures) = (
            Arc::clone(&stop),
            Arc::clone(&killed),
            Arc::clone(&answered),
            Arc::clone(&failures),
        );
        loaders.push(tokio::spawn(async move {
            let http = client();
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) && count < 100_000 {
                let result = try_send(&http, "GET", &url, &[], Bytes::new()).await;
                // Read after the answer: the flag is raised before the kill, so a failure seen
                // with it down really happened before the kill.
                let after_kill = killed.load(Ordering::Relaxed);
                match result {
                    Ok(answer) if answer.status == 200 => {}
                    Ok(answer) => failures
                        .lock()
                        .unwrap()
                        .push((after_kill, format!("status {}", answer.status))),
                    Err(error) => failures.lock().unwrap().push((after_kill, error)),
                }
                count += 1;
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let wait_for_answers = |at_least: u64| {
        let answered = Arc::clone(&answered);
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while answered.load(Ordering::Relaxed) < at_least {
                assert!(tokio::time::Instant::now() < deadline, "load stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for_answers(300).await;
    let victim = upstreams[1].address;
    killed.store(true, Ordering::Relaxed);
    upstreams[1].kill();

    // Wait until the gateway has taken the dead target out of rotation.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view = get(&gateway.admin_url("/api/v1/upstreams")).await.json();
        let dead = view["upstreams"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == victim.to_string())
            .unwrap()
            .clone();
        if dead["eligible"] == false {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead target is still eligible: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed_before_removal = failures.lock().unwrap().len();
    // The gateway itself still serves: degraded, not unhealthy, and it says which upstream.
    let detailed = get(&gateway.admin_url("/health/detailed")).await;
    assert_eq!(detailed.status, 200);
    let detailed = detailed.json();
    assert_eq!(detailed["status"], "degraded", "{detailed:#}");
    assert_eq!(detailed["checks"]["upstreams"]["u"]["status"], "degraded");
    assert_eq!(detailed["checks"]["upstreams"]["u"]["usable"], 2);
    let settled = answered.load(Ordering::Relaxed);
    wait_for_answers(settled + 1000).await;
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        loader.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.iter().all(|(after_kill, _)| *after_kill),
        "failures before the kill: {failures:?}"
    );
    // Requests in flight on the dead target when it died may fail (one per client at most),
    // and so may the requests that reached it before the threshold; new connects to it are
    // refused and retried elsewhere.
    assert!(
        failed_before_removal <= threshold + 4,
        "{failed_before_removal} failures while the dead target was in rotation: {failures:?}"
    );
    assert_eq!(
        failures.len(),
        failed_before_removal,
        "failures after the dead target left rotation: {failures:?}\n{}",
        gateway.log()
    );
}
