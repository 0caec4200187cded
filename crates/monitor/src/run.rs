//! The monitor at work: each cycle evaluates the rules over the signals it is given, feeds the
//! alert manager, and hands each notification due to its receiver's webhook, with retries.
//!
//! What is here and what is not yet: webhook receivers (Alertmanager's payload, version "4"),
//! retried with exponential backoff and jitter for up to [`MAX_DELIVERY_AGE`], in memory — a
//! gateway killed mid-retry loses what was pending; the durable outbox in the database, the other
//! channels (Alertmanager push, Slack, Discord, e-mail) and the history come next (issue 16).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::manager::{AlertManager, Notification, Status};
use crate::rules::{Evaluator, Signals};

/// A delivery is given up after this long.
pub const MAX_DELIVERY_AGE: Duration = Duration::from_secs(3600);
/// Each webhook call's own time limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One notification on its way to a receiver's webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The receiver's name.
    pub receiver: String,
    /// The webhook's URL.
    pub url: String,
    /// The payload (Alertmanager's webhook format, version "4").
    pub body: Value,
}

/// The rules, the alert manager and where each receiver's notifications go.
#[derive(Debug)]
pub struct Monitor {
    evaluator: Evaluator,
    manager: AlertManager,
    webhooks: BTreeMap<String, String>,
    /// The wall clock at an instant, to date alerts.
    anchor: (Instant, SystemTime),
}

impl Monitor {
    /// A monitor for the config's `[alerts]`.
    pub fn new(alerts: &sekisho_config::Alerts, now: Instant) -> Self {
        let webhooks = alerts
            .receivers
            .iter()
            .filter_map(|r| {
                let r = r.get_ref();
                r.webhook.clone().map(|url| (r.name.clone(), url))
            })
            .collect();
        Self {
            evaluator: Evaluator::new(crate::from_config::rules(alerts)),
            manager: AlertManager::new(crate::from_config::settings(alerts)),
            webhooks,
            anchor: (now, SystemTime::now()),
        }
    }

    /// The alert manager (active alerts, silences, acknowledgements).
    pub fn manager(&mut self) -> &mut AlertManager {
        &mut self.manager
    }

    /// One cycle at `now`: the deliveries due.
    pub fn cycle(&mut self, signals: &Signals, now: Instant) -> Vec<Delivery> {
        for state in self.evaluator.evaluate(signals, now) {
            self.manager
                .observe(state.labels, state.annotations, state.severity, now);
        }
        self.manager
            .flush(now)
            .into_iter()
            .filter_map(|note| {
                let url = self.webhooks.get(&note.receiver)?.clone();
                Some(Delivery {
                    receiver: note.receiver.clone(),
                    url,
                    body: self.payload(&note),
                })
            })
            .collect()
    }

    fn rfc3339(&self, at: Instant) -> String {
        let (anchor, wall) = self.anchor;
        let wall = if at >= anchor {
            wall + (at - anchor)
        } else {
            wall - (anchor - at)
        };
        time::OffsetDateTime::from(wall)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }

    /// Alertmanager's webhook payload (version "4").
    fn payload(&self, note: &Notification) -> Value {
        let status = |s: Status| match s {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        };
        let alerts: Vec<Value> = note
            .alerts
            .iter()
            .map(|a| {
                let mut labels = a.labels.clone();
                labels.insert("severity".to_owned(), a.severity.as_str().to_owned());
                json!({
                    "status": status(a.status),
                    "labels": labels,
                    "annotations": a.annotations,
                    "startsAt": self.rfc3339(a.starts_at),
                    "endsAt": a.ends_at.map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), |e| self.rfc3339(e)),
                    "generatorURL": "",
                    "fingerprint": a.fingerprint,
                })
            })
            .collect();
        // Labels every alert of the notification shares.
        let mut common = note
            .alerts
            .first()
            .map(|a| a.labels.clone())
            .unwrap_or_default();
        for alert in &note.alerts {
            common.retain(|k, v| alert.labels.get(k) == Some(v));
        }
        json!({
            "version": "4",
            "groupKey": note.group_key,
            "truncatedAlerts": 0,
            "status": status(note.status),
            "receiver": note.receiver,
            "groupLabels": common,
            "commonLabels": common,
            "commonAnnotations": {},
            "externalURL": "",
            "alerts": alerts,
        })
    }
}

/// Delivers what arrives on `queue`, each receiver's deliveries in order, retrying failures with
/// exponential backoff and jitter (0.5 s doubling to 60 s) for up to [`MAX_DELIVERY_AGE`].
pub async fn deliver(mut queue: mpsc::UnboundedReceiver<Delivery>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut lanes: BTreeMap<String, mpsc::UnboundedSender<Delivery>> = BTreeMap::new();
    while let Some(delivery) = queue.recv().await {
        let lane = lanes.entry(delivery.receiver.clone()).or_insert_with(|| {
            let (sender, mut receiver) = mpsc::unbounded_channel::<Delivery>();
            let client = client.clone();
            // One lane per receiver: a receiver that is down delays only its own notifications.
            tokio::spawn(async move {
                while let Some(delivery) = receiver.recv().await {
                    deliver_one(&client, &delivery).await;
                }
            });
            sender
        });
        let _ = lane.send(delivery);
    }
}

async fn deliver_one(client: &Client<HttpConnector, Full<Bytes>>, delivery: &Delivery) {
    let started = Instant::now();
    let body = Bytes::from(delivery.body.to_string());
    let mut backoff = Duration::from_millis(500);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let request = http::Request::post(delivery.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()));
        let outcome = match request {
            Ok(request) => {
                match tokio::time::timeout(CALL_TIMEOUT, client.request(request)).await {
                    Ok(Ok(response)) if response.status().is_success() => Ok(()),
                    Ok(Ok(response)) => Err(format!("answered {}", response.status())),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err("no answer within 10 s".to_owned()),
                }
            }
            Err(error) => {
                tracing::error!(receiver = %delivery.receiver, %error, "cannot build the webhook request; dropped");
                return;
            }
        };
        match outcome {
            Ok(()) => {
                tracing::info!(receiver = %delivery.receiver, attempt, "alert notification delivered");
                return;
            }
            Err(error) if started.elapsed() >= MAX_DELIVERY_AGE => {
                tracing::error!(receiver = %delivery.receiver, attempt, %error, "alert notification given up");
                return;
            }
            Err(error) => {
                tracing::warn!(receiver = %delivery.receiver, attempt, %error, "alert notification failed; retrying");
                let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Host and process figures from /proc, as signals of target `gateway`: `cpu` (the host's
/// busy share since the last reading), `memory` (the host's used share), `open_fds` (this
/// process's).
#[derive(Debug, Default)]
pub struct Vitals {
    last_cpu: Option<(u64, u64)>,
}

impl Vitals {
    /// Adds the vitals to `signals`; a figure that cannot be read is left out.
    pub fn sample(&mut self, signals: &mut Signals) {
        let gateway = || "gateway".to_owned();
        if let Some((busy, total)) = read_cpu() {
            if let Some((last_busy, last_total)) = self.last_cpu {
                let dt = total.saturating_sub(last_total);
                if dt > 0 {
                    let share = busy.saturating_sub(last_busy) as f64 / dt as f64;
                    signals.insert(("cpu".to_owned(), gateway()), share);
                }
            }
            self.last_cpu = Some((busy, total));
        }
        if let Some(used) = read_memory() {
            signals.insert(("memory".to_owned(), gateway()), used);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            signals.insert(("open_fds".to_owned(), gateway()), fds.count() as f64);
        }
    }
}

fn read_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn read_memory() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| 1.0 - available / total)
}
