#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Each channel's body as its receiver expects it (issue 16): one receiver of the config with a
//! webhook, an Alertmanager, a Slack and a Discord URL, all on one local HTTP server that
//! records what arrives where; an alert fires, then clears, and each channel gets its firing
//! and then its resolved message — through the monitor's cycle, the outbox on SQLite and its
//! worker, over a real socket.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;
use sekisho_monitor::{Monitor, Outbox, OutboxSettings, Signals};
use serde_json::Value;

type Log = Arc<Mutex<Vec<(String, Value)>>>;

/// An HTTP server on 127.0.0.1:0 answering 200 (204 on `/discord`, as Discord does), recording
/// each request's path and JSON body.
async fn server() -> (std::net::SocketAddr, Log) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let recorded = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let recorded = Arc::clone(&recorded);
                    async move {
                        let path = request.uri().path().to_owned();
                        assert_eq!(
                            request.headers()[http::header::CONTENT_TYPE],
                            "application/json"
                        );
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let status = if path == "/discord" { 204 } else { 200 };
                        recorded
                            .lock()
                            .unwrap()
                            .push((path, serde_json::from_slice(&body).unwrap()));
                        let mut response = http::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, log)
}

fn bodies(log: &Log, path: &str) -> Vec<Value> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, b)| b.clone())
        .collect()
}

/// Runs cycles of `monitor` over `signals` (a second apart) until some deliveries are due,
/// writes them to the outbox, and waits until the server got `expected` requests in all.
async fn cycle_until_delivered(
    monitor: &mut Monitor,
    outbox: &Outbox,
    signals: &Signals,
    now: &mut Instant,
    log: &Log,
    expected: usize,
) {
    let mut written = 0;
    for _ in 0..10 {
        *now += Duration::from_secs(1);
        for delivery in monitor.cycle(signals, *now) {
            outbox.enqueue(&delivery).await.unwrap();
            written += 1;
        }
        if written > 0 {
            break;
        }
    }
    assert_eq!(written, 4, "one delivery per channel");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log.lock().unwrap().len() < expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_gets_its_own_body_firing_then_resolved() {
    let (address, log) = server().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"10ms\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"ApiCircuitOpen\"\nsignal = \"circuit_open\"\nupstream = \"api\"\ncritical = 1\n\
         annotations = {{ summary = \"the api's circuit is open\", runbook_url = \"https://runbooks.example/api\" }}\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{address}/webhook\"\n\
         alertmanager = \"http://{address}/\"\nslack = \"http://{address}/slack\"\n\
         discord = \"http://{address}/discord\"\n"
    );
    let config = sekisho_config::parse(&text, "channels.toml").unwrap();
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), OutboxSettings::default())
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    let mut now = Instant::now();
    let mut monitor = Monitor::new(&config.alerts, now);
    let mut signals = Signals::new();
    signals.insert(("circuit_open".to_owned(), "api".to_owned()), 1.0);
    cycle_until_delivered(&mut monitor, &outbox, &signals, &mut now, &log, 4).await;
    signals.insert(("circuit_open".to_owned(), "api".to_owned()), 0.0);
    cycle_until_delivered(&mut monitor, &outbox, &signals, &mut now, &log, 8).await;

    // Webhook: Alertmanager's payload, version 4.
    let webhook = bodies(&log, "/webhook");
    assert_eq!(webhook.len(), 2);
    assert_eq!(
        (&webhook[0]["version"], &webhook[0]["status"]),
        (&Value::from("4"), &Value::from("firing"))
    );
    let fingerprint = webhook[0]["alerts"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fingerprint.len(), 16);
    assert_eq!(webhook[0]["alerts"][0]["labels"]["severity"], "critical");
    assert_eq!(webhook[1]["status"], "resolved");
    assert_eq!(webhook[1]["alerts"][0]["fingerprint"], fingerprint.as_str());

    // Alertmanager: a list of postable alerts on /api/v2/alerts; endsAt only once resolved.
    let pushed = bodies(&log, "/api/v2/alerts");
    assert_eq!(pushed.len(), 2, "{:?}", log.lock().unwrap());
    let firing = &pushed[0].as_array().unwrap()[0];
    assert_eq!(firing["labels"]["alertname"], "ApiCircuitOpen");
    assert_eq!(firing["labels"]["target"], "api");
    assert_eq!(firing["labels"]["severity"], "critical");
    assert_eq!(firing["annotations"]["fingerprint"], fingerprint.as_str());
    assert!(firing["startsAt"].as_str().unwrap().ends_with('Z'));
    assert!(firing.get("endsAt").is_none(), "{firing}");
    let resolved = &pushed[1].as_array().unwrap()[0];
    assert!(resolved["endsAt"].as_str().unwrap().ends_with('Z'));

    // Slack: text and an attachment coloured by severity, green once resolved.
    let slack = bodies(&log, "/slack");
    assert_eq!(slack.len(), 2);
    assert!(slack[0]["text"]
        .as_str()
        .unwrap()
        .contains("ApiCircuitOpen"));
    let attachment = &slack[0]["attachments"][0];
    assert_eq!(attachment["color"], "#FF0000");
    let lines = attachment["text"].as_str().unwrap();
    assert!(lines.contains(&fingerprint), "{lines}");
    assert!(lines.contains("the api's circuit is open"), "{lines}");
    assert!(lines.contains("https://runbooks.example/api"), "{lines}");
    assert_eq!(slack[1]["attachments"][0]["color"], "#2EB67D");

    // Discord: content and an embed, its colour an integer.
    let discord = bodies(&log, "/discord");
    assert_eq!(discord.len(), 2);
    assert!(discord[0]["content"]
        .as_str()
        .unwrap()
        .starts_with("[FIRING]"));
    assert_eq!(discord[0]["embeds"][0]["color"], 0xFF_00_00);
    assert!(discord[0]["embeds"][0]["description"]
        .as_str()
        .unwrap()
        .contains(&fingerprint));
    assert_eq!(discord[1]["embeds"][0]["color"], 0x2E_B6_7D);
    assert!(discord[1]["content"]
        .as_str()
        .unwrap()
        .starts_with("[RESOLVED]"));

    // The delivery log: eight rows, all delivered, the Discord ones with 204.
    let rows = outbox.list(None, None, 100).await.unwrap();
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r.state == "delivered"), "{rows:?}");
    assert!(rows
        .iter()
        .filter(|r| r.channel == "discord")
        .all(|r| r.last_status == Some(204)));
    worker.abort();
    test.remove().await.unwrap();
}

/// A silence made before the alert's group is first notified: nothing reaches the outbox (so
/// nothing can be sent) while it lasts, however many cycles run; once it ends, the firing
/// notification is written and arrives at the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_while_a_silence_lasts_and_the_alert_arrives_when_it_ends() {
    let (address, log) = server().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"10ms\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"ApiCircuitOpen\"\nsignal = \"circuit_open\"\nupstream = \"api\"\ncritical = 1\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{address}/webhook\"\n"
    );
    let config = sekisho_config::parse(&text, "silence.toml").unwrap();
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), OutboxSettings::default())
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    let mut now = Instant::now();
    let mut monitor = Monitor::new(&config.alerts, now);
    let id = monitor.manager().silence(sekisho_monitor::Silence {
        matchers: vec![sekisho_monitor::Matcher::Equal(
            "alertname".to_owned(),
            "ApiCircuitOpen".to_owned(),
        )],
        until: now + Duration::from_secs(3600),
        comment: "ada: maintenance".to_owned(),
    });
    let mut signals = Signals::new();
    signals.insert(("circuit_open".to_owned(), "api".to_owned()), 1.0);
    for _ in 0..100 {
        now += Duration::from_secs(1);
        let due = monitor.cycle(&signals, now);
        assert!(due.is_empty(), "sent while silenced: {due:?}");
    }
    let fingerprint = monitor.manager().active_alerts(now)[0].fingerprint.clone();
    assert!(monitor.manager().muted(&fingerprint, now));
    assert!(outbox.list(None, None, 10).await.unwrap().is_empty());
    assert!(monitor.manager().expire_silence(id));
    cycle_until_written(&mut monitor, &outbox, &signals, &mut now).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bodies(&log, "/webhook").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let firing = &bodies(&log, "/webhook")[0];
    assert_eq!(firing["status"], "firing");
    assert_eq!(firing["alerts"][0]["labels"]["alertname"], "ApiCircuitOpen");
    worker.abort();
    test.remove().await.unwrap();
}

/// Cycles until something is due and writes it to the outbox.
async fn cycle_until_written(
    monitor: &mut Monitor,
    outbox: &Outbox,
    signals: &Signals,
    now: &mut Instant,
) {
    for _ in 0..10 {
        *now += Duration::from_secs(1);
        let due = monitor.cycle(signals, *now);
        if !due.is_empty() {
            for delivery in &due {
                outbox.enqueue(delivery).await.unwrap();
            }
            return;
        }
    }
    panic!("nothing due once the silence ended");
}
