//! Alerting end to end (issue 16, first slice): an upstream fails, its circuit opens, the rule on
//! `circuit_open` fires and a real webhook receiver gets Alertmanager's payload; the upstream
//! recovers, the circuit closes, and the `resolved` notification follows with the same
//! fingerprint. Then the outbox (issue 16): a gateway killed with SIGKILL while its receiver
//! refuses connections delivers the pending notification after its restart, on SQLite and on
//! PostgreSQL, and the delivery log shows it; a receiver down for a whole minute gets its
//! notification once it is back; a reload applies the rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use sekisho_load::ChaosState;
use sekisho_testkit::{
    chaos_upstream, client, next_notification, promtool, send, try_send, webhook_receiver,
    webhook_receiver_on, Sekisho, TempDir,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_fires_to_the_webhook_and_its_resolution_follows() {
    let upstream = chaos_upstream("app").await;
    let (hook, mut bodies) = webhook_receiver().await;
    let dir = TempDir::new("alerting");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\
         [upstreams.app.circuit_breaker]\nminimum_calls = 5\nwindow_calls = 10\nopen_for = \"1s\"\nhalf_open_calls = 1\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [monitor]\ninterval = \"100ms\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"200ms\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"AppCircuitOpen\"\nsignal = \"circuit_open\"\nupstream = \"app\"\nwarning = 1\n\
         annotations = {{ summary = \"the app's circuit is open\" }}\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{hook}/hook\"\n",
        upstream.address
    );
    let path = dir.write("sekisho.toml", &config);
    let gateway = Sekisho::start(&PathBuf::from(env!("CARGO_BIN_EXE_sekisho")), &path);
    let http = client();

    upstream.handle.set(ChaosState {
        error_rate: 1.0,
        ..ChaosState::default()
    });
    for _ in 0..10 {
        let _ = try_send(&http, "GET", &gateway.url("/x"), &[], Bytes::new()).await;
    }
    let firing = next_notification(&mut bodies, "firing").await;
    assert_eq!(firing["version"], "4", "{firing}");
    assert_eq!(firing["status"], "firing", "{firing}");
    assert_eq!(firing["receiver"], "ops");
    let alert = &firing["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "AppCircuitOpen", "{firing}");
    assert_eq!(alert["labels"]["target"], "app");
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(alert["annotations"]["summary"], "the app's circuit is open");
    let fingerprint = alert["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 16);

    // The admin API shows it, silences it and acknowledges it.
    let admin = |path: &str| gateway.admin_url(path);
    let active = send(&http, "GET", &admin("/api/v1/alerts"), &[], Bytes::new()).await;
    let listed = &active.json()["alerts"][0];
    assert_eq!(
        listed["fingerprint"],
        fingerprint.as_str(),
        "{}",
        active.json()
    );
    assert_eq!(
        (listed["severity"].as_str(), listed["muted"].as_bool()),
        (Some("warning"), Some(false))
    );
    let made = send(
        &http,
        "POST",
        &admin("/api/v1/silences"),
        &[],
        Bytes::from_static(
            br#"{"matchers":[{"name":"alertname","value":"AppCircuitOpen"}],"duration_seconds":3600,"comment":"ada: known"}"#,
        ),
    )
    .await;
    assert_eq!(made.status, 201, "{}", String::from_utf8_lossy(&made.body));
    let id = made.json()["id"].as_u64().unwrap();
    let muted = send(&http, "GET", &admin("/api/v1/alerts"), &[], Bytes::new()).await;
    assert_eq!(muted.json()["alerts"][0]["muted"], true);
    let listed = send(&http, "GET", &admin("/api/v1/silences"), &[], Bytes::new()).await;
    assert_eq!(listed.json()["silences"][0]["comment"], "ada: known");
    let gone = send(
        &http,
        "DELETE",
        &admin(&format!("/api/v1/silences/{id}")),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(gone.status, 200);
    let again = send(
        &http,
        "DELETE",
        &admin(&format!("/api/v1/silences/{id}")),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(again.status, 404);
    let acked = send(
        &http,
        "POST",
        &admin(&format!("/api/v1/alerts/{fingerprint}/ack")),
        &[],
        Bytes::from_static(br#"{"by": "ada"}"#),
    )
    .await;
    assert_eq!(acked.status, 200);
    assert_eq!(
        (&acked.json()["by"], &acked.json()["recorded"]),
        (&Value::from("ada"), &Value::from(true)),
        "{}",
        acked.json()
    );
    let unknown = send(
        &http,
        "POST",
        &admin("/api/v1/alerts/0000000000000000/ack"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(unknown.status, 404);

    // The upstream recovers; once the circuit lets a probe through, it closes.
    upstream.handle.set(ChaosState::default());
    let mut closed = false;
    for _ in 0..100 {
        if let Ok(answer) = try_send(&http, "GET", &gateway.url("/x"), &[], Bytes::new()).await {
            if answer.status == 200 {
                closed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the circuit never let a request through again");
    let resolved = loop {
        let body = next_notification(&mut bodies, "resolved").await;
        if body["status"] == "resolved" {
            break body;
        }
    };
    assert_eq!(resolved["alerts"][0]["fingerprint"], fingerprint.as_str());
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");

    // The alert history: one episode, fired, acknowledged by ada, resolved — written in the
    // cycle that resolved it, before its notification was.
    let history = send(
        &http,
        "GET",
        &admin(&format!("/api/v1/alerts/history?fingerprint={fingerprint}")),
        &[],
        Bytes::new(),
    )
    .await
    .json();
    let episode = &history["alerts"][0];
    assert_eq!(
        history["alerts"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
    assert_eq!(episode["alertname"], "AppCircuitOpen");
    assert_eq!(episode["target"], "app");
    assert_eq!(episode["state"], "resolved", "{history}");
    assert_eq!(episode["peak_severity"], "warning");
    assert_eq!(episode["acked_by"], "ada");
    let (fired, resolved_at) = (
        episode["fired_at"].as_i64().unwrap(),
        episode["resolved_at"].as_i64().unwrap(),
    );
    assert_eq!(episode["duration_ms"].as_i64(), Some(resolved_at - fired));
    assert!(episode["acked_at"].as_i64().unwrap() >= fired);
    let stats = send(
        &http,
        "GET",
        &admin("/api/v1/alerts/stats"),
        &[],
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(stats["fired_last_24h"], 1, "{stats}");
    assert_eq!(stats["resolved_last_24h"], 1, "{stats}");
    assert_eq!(stats["active"], 0, "{stats}");
    assert_eq!(stats["fired_last_24h_by_severity"]["warning"], 1, "{stats}");
    let mean = stats["mean_time_to_resolve_seconds"].as_f64().unwrap();
    assert!(
        (mean - (resolved_at - fired) as f64 / 1000.0).abs() < 1e-6,
        "{stats}"
    );

    // The delivery log: both delivered, newest first, one per page with a cursor.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first_page = loop {
        let page = send(
            &http,
            "GET",
            &admin("/api/v1/notifications?state=delivered&limit=1"),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(page.status, 200);
        let page = page.json();
        if page["notifications"][0]["status"] == "resolved" {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = &first_page["notifications"][0];
    assert_eq!(row["receiver"], "ops");
    assert_eq!(row["channel"], "webhook");
    assert_eq!(row["fingerprints"][0], fingerprint.as_str());
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["last_status"], 200);
    let cursor = first_page["next_cursor"].as_i64().expect("a next page");
    let second_page = send(
        &http,
        "GET",
        &admin(&format!("/api/v1/notifications?limit=1&cursor={cursor}")),
        &[],
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(
        second_page["notifications"][0]["status"], "firing",
        "{second_page}"
    );
    assert_eq!(second_page["next_cursor"], Value::Null);

    // Monitoring the monitor: its own series on /metrics, valid for promtool.
    let metrics = send(&http, "GET", &admin("/metrics"), &[], Bytes::new()).await;
    let metrics = String::from_utf8(metrics.body.to_vec()).unwrap();
    let delivered = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "sekisho_notification_deliveries_total{receiver=\"ops\",channel=\"webhook\",outcome=\"delivered\"} ",
            )
        })
        .and_then(|v| v.parse::<u64>().ok());
    assert!(delivered.is_some_and(|n| n >= 2), "{metrics}");
    assert!(
        metrics.contains("sekisho_alerts_firing{severity=\"warning\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sekisho_notifications_pending "),
        "{metrics}"
    );
    let last_run = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sekisho_monitor_last_run_timestamp_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(last_run > 1.7e9, "{last_run}");
    promtool(&["check", "metrics"], &metrics);
    let dead = send(
        &http,
        "GET",
        &admin("/api/v1/notifications?state=dead"),
        &[],
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(dead["notifications"].as_array().map(Vec::len), Some(0));
    // A test notification per receiver, through the outbox.
    let tested = send(
        &http,
        "POST",
        &admin("/api/v1/receivers/ops/test"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        tested.status,
        202,
        "{}",
        String::from_utf8_lossy(&tested.body)
    );
    let test_body = next_notification(&mut bodies, "test").await;
    assert_eq!(test_body["alerts"][0]["labels"]["alertname"], "SekishoTest");
    assert_eq!(test_body["alerts"][0]["labels"]["severity"], "info");
    let unknown = send(
        &http,
        "POST",
        &admin("/api/v1/receivers/nobody/test"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(unknown.status, 404);
    for bad in ["state=lost", "limit=0", "cursor=x", "page=2"] {
        let answer = send(
            &http,
            "GET",
            &admin(&format!("/api/v1/notifications?{bad}")),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.status, 400, "{bad}");
        assert_eq!(answer.error_code(), "BAD_REQUEST");
    }
}

/// The notification a killed gateway left pending reaches the receiver after the restart.
async fn a_notification_pending_at_a_kill_is_delivered_after_the_restart(
    dialect: sekisho_db::Dialect,
) {
    let upstream = chaos_upstream("app").await;
    let database = sekisho_db::testing::TestDatabase::new(dialect)
        .await
        .unwrap();
    // The receiver's port, refusing connections until the receiver starts there.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = TempDir::new("alerting-kill");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         {}\
         [upstreams.app]\ntargets = [\"{}\"]\n\
         [upstreams.app.circuit_breaker]\nminimum_calls = 5\nwindow_calls = 10\nopen_for = \"60s\"\nhalf_open_calls = 1\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [monitor]\ninterval = \"100ms\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"200ms\"\ndefault_rules = false\n\
         [alerts.outbox]\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n\
         [[alerts.rules]]\nname = \"AppCircuitOpen\"\nsignal = \"circuit_open\"\nupstream = \"app\"\nwarning = 1\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{hook}/hook\"\n",
        database.store_toml(),
        upstream.address
    );
    let path = dir.write("sekisho.toml", &config);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_sekisho"));
    let mut gateway = Sekisho::start(&binary, &path);
    let http = client();
    upstream.handle.set(ChaosState {
        error_rate: 1.0,
        ..ChaosState::default()
    });
    for _ in 0..10 {
        let _ = try_send(&http, "GET", &gateway.url("/x"), &[], Bytes::new()).await;
    }
    // Wait until the delivery log shows the notification pending after refused attempts.
    let pending_url = gateway.admin_url("/api/v1/notifications?state=pending");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let id = loop {
        let answer = send(&http, "GET", &pending_url, &[], Bytes::new()).await;
        let log = answer.json();
        let tried = log["notifications"].as_array().and_then(|rows| {
            rows.iter()
                .find(|r| r["attempts"].as_i64() >= Some(2) && r["last_error"].as_str().is_some())
        });
        if let Some(row) = tried {
            assert_eq!(row["receiver"], "ops", "{log}");
            assert_eq!(row["status"], "firing", "{log}");
            break row["id"].as_i64().unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pending notification with failed attempts: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    gateway.kill();

    let (_, mut bodies) = webhook_receiver_on(tokio::net::TcpListener::bind(hook).await.unwrap());
    let gateway = Sekisho::start(&binary, &path);
    // Within the lease (30 s) even if the kill came between a claim and its outcome.
    let firing = tokio::time::timeout(Duration::from_secs(45), bodies.recv())
        .await
        .expect("the pending notification was not delivered after the restart")
        .unwrap();
    assert_eq!(firing["status"], "firing", "{firing}");
    assert_eq!(firing["alerts"][0]["labels"]["alertname"], "AppCircuitOpen");
    assert_eq!(
        firing["alerts"][0]["fingerprint"].as_str().unwrap().len(),
        16
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = send(
            &http,
            "GET",
            &gateway.admin_url("/api/v1/notifications?state=delivered"),
            &[],
            Bytes::new(),
        )
        .await;
        let log = answer.json();
        if let Some(row) = log["notifications"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["id"].as_i64() == Some(id)))
        {
            assert!(row["attempts"].as_i64().unwrap() >= 3, "{log}");
            assert!(row["delivered_at"].as_i64().is_some(), "{log}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log does not show it delivered: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(gateway);
    database.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_notification_pending_at_a_kill_is_delivered_after_the_restart() {
    a_notification_pending_at_a_kill_is_delivered_after_the_restart(sekisho_db::Dialect::Sqlite)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_notification_pending_at_a_kill_is_delivered_after_the_restart() {
    a_notification_pending_at_a_kill_is_delivered_after_the_restart(sekisho_db::Dialect::Postgres)
        .await;
}

/// A reload applies `[alerts]`: a rule added by it fires, and removing it resolves its alert;
/// a change only a restart applies is named in the reload's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_alert_rules() {
    let (hook, mut bodies) = webhook_receiver().await;
    let dir = TempDir::new("alerting-reload");
    let config = |rules: &str, interval: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nwatch_interval = \"0s\"\n\
             [upstreams.app]\ntargets = [\"127.0.0.1:9\"]\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
             [monitor]\ninterval = \"{interval}\"\n\
             [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"200ms\"\ndefault_rules = false\n\
             [[alerts.rules]]\nname = \"Quiet\"\nsignal = \"backup_age\"\nwarning = 1e12\n\
             {rules}\
             [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{hook}/hook\"\n"
        )
    };
    let loud = "[[alerts.rules]]\nname = \"Loud\"\nsignal = \"backup_age\"\ndirection = \"below\"\nwarning = 1e12\n";
    let path = dir.write("sekisho.toml", &config("", "100ms"));
    let mut gateway = Sekisho::start(&PathBuf::from(env!("CARGO_BIN_EXE_sekisho")), &path);
    let http = client();
    let reload_url = gateway.admin_url("/api/v1/config/reload");
    let reload = || async { send(&http, "POST", &reload_url, &[], Bytes::new()).await };

    dir.write("sekisho.toml", &config(loud, "100ms"));
    let answer = reload().await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let firing = next_notification(&mut bodies, "firing").await;
    assert_eq!(
        firing["alerts"][0]["labels"]["alertname"], "Loud",
        "{firing}"
    );

    // Removed again (and the cycle changed, which needs a restart and is said so).
    dir.write("sekisho.toml", &config("", "1s"));
    let answer = reload().await;
    assert_eq!(answer.status, 200);
    let needs_restart = answer.json()["needs_restart"].to_string();
    assert!(
        needs_restart.contains("monitor.interval"),
        "{}",
        answer.json()
    );
    let applied = gateway.wait_for_log(
        |line| {
            line["message"] == "alert rules and receivers of the reloaded config in force"
                && line["rules"] == "[\"Quiet\"]"
        },
        Duration::from_secs(20),
    );
    assert!(applied.is_some(), "{}", gateway.log());
    let resolved = next_notification(&mut bodies, "resolved").await;
    assert_eq!(
        resolved["alerts"][0]["labels"]["alertname"], "Loud",
        "{resolved}"
    );
}

/// A receiver down for a whole minute: the notification waits in the outbox, retried with
/// backoff, and reaches the receiver once it is back — nothing lost, delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_minute_gets_the_notification_once_it_is_back() {
    // The receiver's port, refusing connections for the outage.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = TempDir::new("alerting-outage");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"127.0.0.1:9\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [monitor]\ninterval = \"200ms\"\n\
         [alerts]\ngroup_wait = \"0s\"\ndefault_rules = false\n\
         [alerts.outbox]\nbackoff_max = \"5s\"\n\
         [[alerts.rules]]\nname = \"StoreIsYoung\"\nsignal = \"backup_age\"\ndirection = \"below\"\nwarning = 1e12\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{hook}/hook\"\n"
    );
    let path = dir.write("sekisho.toml", &config);
    let gateway = Sekisho::start(&PathBuf::from(env!("CARGO_BIN_EXE_sekisho")), &path);
    let http = client();

    // The outage: a minute of refused connections (the sleep is the outage, not a wait for an
    // event).
    tokio::time::sleep(Duration::from_secs(60)).await;
    let log = send(
        &http,
        "GET",
        &gateway.admin_url("/api/v1/notifications?state=pending"),
        &[],
        Bytes::new(),
    )
    .await
    .json();
    let row = &log["notifications"][0];
    assert_eq!(row["status"], "firing", "{log}");
    let attempts = row["attempts"].as_i64().unwrap_or(0);
    assert!(attempts >= 5, "retried through the outage: {log}");
    assert!(row["last_error"].as_str().is_some(), "{log}");

    // Back: delivered within the longest backoff, once.
    let (_, mut bodies) = webhook_receiver_on(tokio::net::TcpListener::bind(hook).await.unwrap());
    let firing = next_notification(&mut bodies, "firing").await;
    assert_eq!(
        firing["alerts"][0]["labels"]["alertname"], "StoreIsYoung",
        "{firing}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(6), bodies.recv())
            .await
            .is_err(),
        "delivered twice"
    );
}
