#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Alertmanager channel against a real Alertmanager (Debian's `prometheus-alertmanager`,
//! started here on a free port, clustering off): an alert fires, the outbox pushes it to
//! `/api/v2/alerts`, and Alertmanager's own API then lists it with its labels; it resolves, and
//! Alertmanager no longer lists it as active. Skipped loudly when the binary is missing, unless
//! SEKISHO_REQUIRE_ALERTMANAGER is set (scripts/test installs it and sets it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;
use sekisho_monitor::{Monitor, Outbox, OutboxSettings, Signals};
use serde_json::Value;

const BINARY: &str = "prometheus-alertmanager";

struct Alertmanager {
    child: Child,
    address: std::net::SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> Option<Alertmanager> {
    let dir = std::env::temp_dir().join(format!(
        "sekisho_alertmanager_{}_{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
    )
    .unwrap();
    // A free port: bound, read, released for Alertmanager.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(BINARY)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={address}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => Some(Alertmanager {
            child,
            address,
            dir,
        }),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dir);
            assert!(
                std::env::var_os("SEKISHO_REQUIRE_ALERTMANAGER").is_none(),
                "{BINARY} is required but missing"
            );
            eprintln!("SKIPPED: {BINARY} is not installed; run scripts/test to test with it");
            None
        }
    }
}

async fn get(url: &str) -> Option<(u16, Value)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(url.parse().unwrap()).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Alertmanager's active alerts named `name`.
async fn active(alertmanager: &Alertmanager, name: &str) -> Vec<Value> {
    let url = format!(
        "http://{}/api/v2/alerts?active=true&silenced=false&inhibited=false",
        alertmanager.address
    );
    let Some((200, Value::Array(alerts))) = get(&url).await else {
        return Vec::new();
    };
    alerts
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .collect()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_lists_the_pushed_alert_until_it_resolves() {
    let Some(alertmanager) = start() else {
        return;
    };
    let ready = format!("http://{}/-/ready", alertmanager.address);
    wait_for("Alertmanager ready", async || {
        get(&ready).await.is_some_and(|(status, _)| status == 200)
    })
    .await;

    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"10ms\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"ApiCircuitOpen\"\nsignal = \"circuit_open\"\nupstream = \"api\"\ncritical = 1\n\
         annotations = {{ summary = \"the api's circuit is open\" }}\n\
         [[alerts.receivers]]\nname = \"am\"\nalertmanager = \"http://{}\"\n",
        alertmanager.address
    );
    let config = sekisho_config::parse(&text, "alertmanager.toml").unwrap();
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), OutboxSettings::default())
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    let mut now = Instant::now();
    let mut monitor = Monitor::new(&config.alerts, now);
    let mut signals = Signals::new();
    signals.insert(("circuit_open".to_owned(), "api".to_owned()), 1.0);
    let mut cycle = async |monitor: &mut Monitor, signals: &Signals| {
        let mut written = 0;
        for _ in 0..10 {
            now += Duration::from_secs(1);
            for delivery in monitor.cycle(signals, now) {
                outbox.enqueue(&delivery).await.unwrap();
                written += 1;
            }
            if written > 0 {
                return;
            }
        }
        panic!("no delivery due");
    };
    cycle(&mut monitor, &signals).await;
    wait_for("the alert listed by Alertmanager", async || {
        !active(&alertmanager, "ApiCircuitOpen").await.is_empty()
    })
    .await;
    let listed = active(&alertmanager, "ApiCircuitOpen").await;
    assert_eq!(listed[0]["labels"]["target"], "api");
    assert_eq!(listed[0]["labels"]["severity"], "critical");
    assert_eq!(
        listed[0]["annotations"]["summary"],
        "the api's circuit is open"
    );
    assert_eq!(listed[0]["status"]["state"], "active");

    signals.insert(("circuit_open".to_owned(), "api".to_owned()), 0.0);
    cycle(&mut monitor, &signals).await;
    wait_for("the alert resolved in Alertmanager", async || {
        active(&alertmanager, "ApiCircuitOpen").await.is_empty()
    })
    .await;
    let rows = outbox.list(None, None, 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r.state == "delivered" && r.channel == "alertmanager"));
    worker.abort();
    test.remove().await.unwrap();
}
