//! Issue 16's two figures: the notification queue's throughput to a local webhook on SQLite
//! (goal ≥ 1,000 deliveries/s: each one written to the outbox, claimed, POSTed over a real
//! socket and marked delivered), and one evaluation cycle of 100 rules over the built-in signals
//! (goal ≤ 1 ms) — the evaluator alone, and the monitor's whole cycle (evaluation, alert
//! manager, notification bodies) with the default rules among the 100.
//!
//! Run: `cargo bench -p sekisho-monitor --bench monitor`.
// A benchmark, not a request path: a setup that fails may panic.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;
use sekisho_monitor::{
    Channel, Condition, Delivery, Direction, Evaluator, Outbox, OutboxSettings, Rule, Severity,
    Signals,
};
use serde_json::json;

/// Notifications per measured batch.
const BATCH: u64 = 500;

/// A webhook receiver answering 200, counting what it got.
async fn receiver() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let service = service_fn(move |_request: http::Request<hyper::body::Incoming>| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new()))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{address}/hook"), count)
}

fn outbox_throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (outbox, url, count, database) = runtime.block_on(async {
        let database = TestDatabase::new(Dialect::Sqlite).await.unwrap();
        let outbox = Outbox::open(database.open().await.unwrap(), OutboxSettings::default())
            .await
            .unwrap();
        let (url, count) = receiver().await;
        tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
        (outbox, url, count, database)
    });
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.bench_function("sqlite_webhook_500_notifications", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let target = count.load(Ordering::Relaxed) + BATCH;
                    let started = Instant::now();
                    for n in 0..BATCH {
                        let group = format!("g{}", n % 50);
                        outbox
                            .enqueue(&Delivery {
                                receiver: "ops".to_owned(),
                                channel: Channel::Webhook,
                                url: url.clone(),
                                group_key: group.clone(),
                                status: "firing".to_owned(),
                                fingerprints: vec![format!("{n:016x}")],
                                body: json!({ "version": "4", "groupKey": group, "n": n }),
                            })
                            .await
                            .unwrap();
                    }
                    while count.load(Ordering::Relaxed) < target
                        || outbox.depth().await.unwrap().pending > 0
                    {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    total += started.elapsed();
                }
                total
            })
        });
    });
    group.finish();
    runtime.block_on(database.remove()).unwrap();
}

/// 100 threshold rules: 25 signals × 4 targets (upstreams), each with warning and critical.
fn rules_100(c: &mut Criterion) {
    let signals_names = [
        "upstream_error_rate",
        "upstream_latency_p95",
        "circuit_open",
        "no_healthy_targets",
        "route_error_rate",
    ];
    let mut rules = Vec::new();
    let mut signals = Signals::new();
    for n in 0..100 {
        let signal = signals_names[n % signals_names.len()];
        let target = format!("upstream{}", n / signals_names.len());
        signals.insert((signal.to_owned(), target.clone()), (n % 7) as f64 / 10.0);
        let mut thresholds = BTreeMap::new();
        thresholds.insert(Severity::Warning, 0.3);
        thresholds.insert(Severity::Critical, 0.5);
        rules.push(Rule {
            name: format!("Rule{n}"),
            condition: Condition::Threshold {
                signal: signal.to_owned(),
                target: Some(target),
                direction: Direction::Above,
                thresholds,
            },
            for_: Duration::from_secs(30),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        });
    }
    for vital in ["cpu", "memory", "disk", "open_fds"] {
        signals.insert((vital.to_owned(), "gateway".to_owned()), 0.4);
    }
    let mut evaluator = Evaluator::new(rules);
    let started = Instant::now();
    let mut tick = 0u64;
    c.bench_function("rules/evaluate_100_rules", |b| {
        b.iter(|| {
            tick += 1;
            let now = started + Duration::from_millis(tick * 10);
            black_box(evaluator.evaluate(black_box(&signals), now))
        });
    });
}

/// A whole cycle of the monitor as the binary runs it: the 10 default rules and 90 of a config
/// (18 upstreams × 5 signals) over the built-in signals of 18 upstreams and the gateway's
/// vitals, a tenth of them firing — evaluation, the alert manager (fingerprints, groups,
/// inhibition, dedupe) and the bodies of the notifications due.
fn monitor_cycle_100_rules(c: &mut Criterion) {
    let upstream_signals = [
        ("upstream_error_rate", 0.05, 0.5),
        ("upstream_latency_p95", 1.0, 5.0),
        ("circuit_open", 1.0, 1.0),
        ("no_healthy_targets", 1.0, 1.0),
        ("route_error_rate", 0.05, 0.5),
    ];
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:8080\"\n");
    for n in 0..18 {
        text.push_str(&format!(
            "[upstreams.u{n}]\ntargets = [\"127.0.0.1:{}\"]\n",
            9000 + n
        ));
    }
    text.push_str(
        "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u0\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"10ms\"\n",
    );
    let mut signals = Signals::new();
    for n in 0..18 {
        for (k, (signal, warning, critical)) in upstream_signals.iter().enumerate() {
            let scope = if *signal == "route_error_rate" {
                "route = \"r\""
            } else {
                ""
            };
            let scope = if scope.is_empty() {
                format!("upstream = \"u{n}\"")
            } else {
                scope.to_owned()
            };
            text.push_str(&format!(
                "[[alerts.rules]]\nname = \"R{n}_{k}\"\nsignal = \"{signal}\"\n{scope}\n\
                 warning = {warning}\ncritical = {critical}\nfor = \"0s\"\n"
            ));
            // One signal in ten crosses its warning threshold.
            let value = if (n * 5 + k) % 10 == 0 {
                *critical
            } else {
                0.0
            };
            signals.insert(((*signal).to_owned(), format!("u{n}")), value);
        }
    }
    signals.insert(("route_error_rate".to_owned(), "r".to_owned()), 0.0);
    for vital in ["cpu", "memory", "disk"] {
        signals.insert((vital.to_owned(), "gateway".to_owned()), 0.4);
    }
    signals.insert(("open_fds".to_owned(), "gateway".to_owned()), 120.0);
    signals.insert(("database_rtt".to_owned(), "gateway".to_owned()), 0.001);
    signals.insert(
        ("notifications_pending".to_owned(), "gateway".to_owned()),
        0.0,
    );
    signals.insert(
        (
            "notification_oldest_pending_seconds".to_owned(),
            "gateway".to_owned(),
        ),
        0.0,
    );
    text.push_str("[[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://127.0.0.1:9/hook\"\n");
    let config = sekisho_config::parse(&text, "bench.toml").unwrap();
    let started = Instant::now();
    let mut monitor = sekisho_monitor::Monitor::new(&config.alerts, started);
    let rules = sekisho_monitor::from_config::rules(&config.alerts).len();
    assert_eq!(rules, 100, "{rules} rules");
    let mut tick = 0u64;
    c.bench_function("rules/monitor_cycle_100_rules", |b| {
        b.iter(|| {
            tick += 1;
            let now = started + Duration::from_millis(tick * 10);
            black_box(monitor.cycle(black_box(&signals), now));
            black_box(monitor.take_history());
        });
    });
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    rules_100(&mut criterion);
    monitor_cycle_100_rules(&mut criterion);
    outbox_throughput(&mut criterion);
    criterion.final_summary();
}
