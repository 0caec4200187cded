//! Alert state across a real restart (issue 16): the gateway's circuit opens, the alert fires
//! and its receiver is told; the gateway is killed with SIGKILL, the upstream recovers while it
//! is down, and the restarted gateway — on the same SQLite file (PostgreSQL too) — puts back
//! the alert it had announced and sends the `resolved` that was owed, with the same fingerprint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use sekisho_load::ChaosState;
use sekisho_testkit::{
    chaos_upstream, client, next_notification, try_send, webhook_receiver, Sekisho, TempDir,
};
use serde_json::Value;

async fn a_resolution_owed_at_a_kill_is_sent_after_the_restart(dialect: sekisho_db::Dialect) {
    let upstream = chaos_upstream("app").await;
    let (hook, mut bodies) = webhook_receiver().await;
    let database = sekisho_db::testing::TestDatabase::new(dialect)
        .await
        .unwrap();
    let dir = TempDir::new("alerting-restart");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         {}\
         [upstreams.app]\ntargets = [\"{}\"]\n\
         [upstreams.app.circuit_breaker]\nminimum_calls = 5\nwindow_calls = 10\nopen_for = \"60s\"\nhalf_open_calls = 1\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [monitor]\ninterval = \"100ms\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"200ms\"\ndefault_rules = false\n\
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
    let firing = next_notification(&mut bodies, "firing").await;
    assert_eq!(firing["status"], "firing", "{firing}");
    let fingerprint = firing["alerts"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    // The gateway notes what the receiver was told once the row is written, and marks the
    // firing's outbox row delivered once the receiver answered; wait for both before the kill
    // (polled: they are rows of the database, no event to await). A row still claimed by the
    // killed process would hold its lane — and the `resolved` behind it — until the claim's
    // lease ends (30 s), which is not what this test is about.
    let db = database.open().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let noted: Result<i64, _> = sekisho_db::sqlx::query_scalar(
            "SELECT COUNT(*) FROM alert_notified WHERE fingerprint = $1 AND receiver = 'ops'",
        )
        .bind(&fingerprint)
        .fetch_one(db.pool())
        .await;
        let pending: Result<i64, _> = sekisho_db::sqlx::query_scalar(
            "SELECT COUNT(*) FROM notifications WHERE state = 'pending'",
        )
        .fetch_one(db.pool())
        .await;
        if noted.is_ok_and(|n| n == 1) && pending.is_ok_and(|n| n == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "what the receiver was told is not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.pool().close().await;
    gateway.kill();

    // Recovered while the gateway was down; its circuit starts closed after the restart.
    upstream.handle.set(ChaosState::default());
    let gateway = Sekisho::start(&binary, &path);
    // (A firing delivered just before the kill, but not yet marked so, may come again first:
    // delivery is at least once.)
    let resolved = loop {
        let body = next_notification(&mut bodies, "resolved").await;
        if body["status"] == "resolved" {
            break body;
        }
        assert_eq!(
            body["alerts"][0]["fingerprint"],
            fingerprint.as_str(),
            "{body}"
        );
    };
    assert_eq!(
        resolved["alerts"][0]["fingerprint"],
        fingerprint.as_str(),
        "{resolved}"
    );
    assert_eq!(
        resolved["alerts"][0]["labels"]["alertname"],
        "AppCircuitOpen"
    );
    drop(gateway);
    database.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_resolution_owed_at_a_kill_is_sent_after_the_restart() {
    a_resolution_owed_at_a_kill_is_sent_after_the_restart(sekisho_db::Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_resolution_owed_at_a_kill_is_sent_after_the_restart() {
    a_resolution_owed_at_a_kill_is_sent_after_the_restart(sekisho_db::Dialect::Postgres).await;
}

/// The silences on `gateway`'s admin API: (id, comment, seconds left).
async fn silences(gateway: &Sekisho) -> Vec<(u64, String, u64)> {
    let answer = sekisho_testkit::get(&gateway.admin_url("/api/v1/silences")).await;
    assert_eq!(answer.status, 200);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    body["silences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap(),
                s["comment"].as_str().unwrap().to_owned(),
                s["ends_in_seconds"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn silences_outlive_a_restart(dialect: sekisho_db::Dialect) {
    let (hook, _bodies) = webhook_receiver().await;
    let database = sekisho_db::testing::TestDatabase::new(dialect)
        .await
        .unwrap();
    let dir = TempDir::new("alerting-silences");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         {}\
         [upstreams.app]\ntargets = [\"127.0.0.1:9\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [monitor]\ninterval = \"100ms\"\n\
         [alerts]\ndefault_rules = false\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{hook}/hook\"\n",
        database.store_toml()
    );
    let path = dir.write("sekisho.toml", &config);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_sekisho"));
    let mut gateway = Sekisho::start(&binary, &path);
    let http = client();
    let mut ids = Vec::new();
    for comment in ["maintenance", "noisy"] {
        let body = format!(
            r#"{{"matchers":[{{"name":"alertname","value":"X"}}],"duration_seconds":3600,"comment":"{comment}"}}"#
        );
        let created = sekisho_testkit::send(
            &http,
            "POST",
            &gateway.admin_url("/api/v1/silences"),
            &[],
            Bytes::from(body),
        )
        .await;
        assert_eq!(created.status, 201);
        ids.push(created.json()["id"].as_u64().unwrap());
    }
    // The second is ended early; the first must come back after the restart, the second not.
    let ended = sekisho_testkit::send(
        &http,
        "DELETE",
        &gateway.admin_url(&format!("/api/v1/silences/{}", ids[1])),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(ended.status, 200);

    gateway.kill();
    let gateway = Sekisho::start(&binary, &path);
    // Put back by the monitor's task as it starts (polled: no event says when).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let restored = loop {
        let listed = silences(&gateway).await;
        if !listed.is_empty() || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(restored.len(), 1, "{restored:?}");
    let (id, comment, left) = &restored[0];
    assert_eq!((*id, comment.as_str()), (ids[0], "maintenance"));
    assert!((3_500..=3_600).contains(left), "{left} s left");
    // A new silence is numbered after every kept one.
    let created = sekisho_testkit::send(
        &http,
        "POST",
        &gateway.admin_url("/api/v1/silences"),
        &[],
        Bytes::from(r#"{"matchers":[{"name":"alertname","value":"Y"}],"duration_seconds":60}"#),
    )
    .await;
    assert!(created.json()["id"].as_u64().unwrap() > ids[1]);
    drop(gateway);
    database.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_silences_outlive_a_restart() {
    silences_outlive_a_restart(sekisho_db::Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_silences_outlive_a_restart() {
    silences_outlive_a_restart(sekisho_db::Dialect::Postgres).await;
}
