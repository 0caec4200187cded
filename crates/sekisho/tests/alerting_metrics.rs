//! Alert rules over any exported metric (issue 16), and the signals read from the gateway's
//! figures (`route_error_rate`, `redis_rtt`): a rule on the per-second rate of
//! `sekisho_requests_total` for one route's 5xx answers, over a window, fires to a real webhook
//! receiver while the upstream's errors pass through the gateway, and resolves once they stop —
//! the real binary, its `/metrics` exposition read back by the monitor every cycle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use sekisho_load::ChaosState;
use sekisho_testkit::{chaos_upstream, client, send, try_send, webhook_receiver, Sekisho, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_the_rate_of_5xx_answers_fires_while_they_pass_and_resolves_when_they_stop() {
    let upstream = chaos_upstream("app").await;
    let (hook, mut bodies) = webhook_receiver().await;
    let dir = TempDir::new("alerting_metrics");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [monitor]\ninterval = \"100ms\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"200ms\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"AppServerErrors\"\nmetric = \"sekisho_requests_total\"\n\
         match = {{ route = \"app\", class = \"5xx\" }}\nfunction = \"rate\"\nwindow = \"1s\"\nwarning = 2\n\
         annotations = {{ summary = \"the app answers 5xx\" }}\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{hook}/hook\"\n",
        upstream.address
    );
    let path = dir.write("sekisho.toml", &config);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_sekisho"));
    let checked = std::process::Command::new(&binary)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let gateway = Sekisho::start(&binary, &path);
    let http = client();

    // Successful traffic: the 2xx series moves, the watched one does not.
    for _ in 0..20 {
        let answer = send(&http, "GET", &gateway.url("/ok"), &[], Bytes::new()).await;
        assert_eq!(answer.status, 200);
    }
    // The upstream fails: 5xx answers pass through the gateway until the alert fires.
    upstream.handle.set(ChaosState {
        error_rate: 1.0,
        ..ChaosState::default()
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let firing = loop {
        let answer = try_send(&http, "GET", &gateway.url("/fail"), &[], Bytes::new()).await;
        assert_eq!(answer.map(|a| a.status).ok(), Some(500));
        if let Ok(body) = bodies.try_recv() {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no firing notification within 20 s"
        );
    };
    assert_eq!(firing["status"], "firing", "{firing}");
    let alert = &firing["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "AppServerErrors", "{firing}");
    assert_eq!(
        alert["labels"]["target"], "{class=\"5xx\",route=\"app\",upstream=\"app\"}",
        "{firing}"
    );
    assert_eq!(alert["labels"]["severity"], "warning");
    let rate: f64 = alert["annotations"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rate >= 2.0, "{firing}");
    let fingerprint = alert["fingerprint"].as_str().unwrap().to_owned();

    // The errors stop: once they leave the window the rate is 0, and `resolved` follows.
    upstream.handle.set(ChaosState::default());
    let resolved = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let body = bodies.recv().await.unwrap();
            if body["status"] == "resolved" {
                return body;
            }
        }
    })
    .await
    .expect("no resolved notification within 20 s");
    assert_eq!(resolved["alerts"][0]["fingerprint"], fingerprint.as_str());
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_error_rate_and_redis_rtt_are_measured_as_signals() {
    let upstream = chaos_upstream("app").await;
    let (hook, mut bodies) = webhook_receiver().await;
    let dir = TempDir::new("alerting_signals");
    let redis =
        std::env::var("SEKISHO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // A cached route puts the gateway on Redis; two rules on the signals this test is about.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [store]\nredis = \"{redis}\"\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [routes.cache]\nttl = \"1s\"\n\
         [monitor]\ninterval = \"100ms\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"200ms\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"AppServerErrors\"\nsignal = \"route_error_rate\"\n\
         route = \"app\"\ncritical = 0.5\n\
         [[alerts.rules]]\nname = \"RedisAnswers\"\nsignal = \"redis_rtt\"\ninfo = 0.000001\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{hook}/hook\"\n",
        upstream.address
    );
    let path = dir.write("sekisho.toml", &config);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_sekisho"));
    let gateway = Sekisho::start(&binary, &path);
    let http = client();
    upstream.handle.set(ChaosState {
        error_rate: 1.0,
        ..ChaosState::default()
    });
    // Failing answers pass until both alerts have fired: the route's share of 5xx (1.0) and a
    // Redis round trip (any, above a microsecond).
    let mut fired = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fired.len() < 2 {
        let answer = try_send(&http, "GET", &gateway.url("/fail"), &[], Bytes::new()).await;
        assert_eq!(answer.map(|a| a.status).ok(), Some(500));
        while let Ok(body) = bodies.try_recv() {
            for alert in body["alerts"].as_array().into_iter().flatten() {
                if alert["status"] == "firing" {
                    let name = alert["labels"]["alertname"].as_str().unwrap().to_owned();
                    fired.insert(name, alert.clone());
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "within 20 s only {fired:?}"
        );
    }
    let errors = &fired["AppServerErrors"];
    assert_eq!(errors["labels"]["target"], "app", "{errors}");
    assert_eq!(errors["labels"]["severity"], "critical", "{errors}");
    let share: f64 = errors["annotations"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(share > 0.5, "{errors}");
    let rtt = &fired["RedisAnswers"];
    assert_eq!(rtt["labels"]["target"], "gateway", "{rtt}");
    let seconds: f64 = rtt["annotations"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seconds > 0.0 && seconds < 1.0, "{rtt}");
}
