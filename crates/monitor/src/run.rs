//! The monitor at work: each cycle evaluates the rules over the signals it is given, feeds the
//! alert manager, and turns each notification due into one [`Delivery`] per channel of its
//! receiver, for the outbox (`outbox.rs`) to write and its worker (`worker.rs`) to send.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use serde_json::Value;

use crate::channels::Channel;
use crate::manager::{AlertManager, Status};
use crate::rules::{Evaluator, Signals};

/// One notification on its way to one channel of a receiver.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The receiver's name.
    pub receiver: String,
    /// The channel.
    pub channel: Channel,
    /// Where it is POSTed.
    pub url: String,
    /// The alert group it is about.
    pub group_key: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The fingerprints of its alerts.
    pub fingerprints: Vec<String>,
    /// The body, in the channel's shape.
    pub body: Value,
}

/// The rules, the alert manager and each receiver's channels.
#[derive(Debug)]
pub struct Monitor {
    evaluator: Evaluator,
    manager: AlertManager,
    channels: BTreeMap<String, Vec<(Channel, String)>>,
    /// The wall clock at an instant, to date alerts.
    anchor: (Instant, SystemTime),
}

/// Each channel a receiver of the config has, with its URL.
pub fn receiver_channels(receiver: &sekisho_config::AlertReceiver) -> Vec<(Channel, String)> {
    [
        (Channel::Webhook, &receiver.webhook),
        (Channel::Alertmanager, &receiver.alertmanager),
        (Channel::Slack, &receiver.slack),
        (Channel::Discord, &receiver.discord),
    ]
    .into_iter()
    .filter_map(|(channel, url)| url.as_ref().map(|url| (channel, channel.endpoint(url))))
    .collect()
}

impl Monitor {
    /// A monitor for the config's `[alerts]`.
    pub fn new(alerts: &sekisho_config::Alerts, now: Instant) -> Self {
        let channels = alerts
            .receivers
            .iter()
            .map(|r| (r.get_ref().name.clone(), receiver_channels(r.get_ref())))
            .collect();
        Self {
            evaluator: Evaluator::new(crate::from_config::rules(alerts)),
            manager: AlertManager::new(crate::from_config::settings(alerts)),
            channels,
            anchor: (now, SystemTime::now()),
        }
    }

    /// The alert manager (active alerts, silences, acknowledgements).
    pub fn manager(&mut self) -> &mut AlertManager {
        &mut self.manager
    }

    /// One cycle at `now`: the deliveries due, one per notification and channel.
    pub fn cycle(&mut self, signals: &Signals, now: Instant) -> Vec<Delivery> {
        for state in self.evaluator.evaluate(signals, now) {
            self.manager
                .observe(state.labels, state.annotations, state.severity, now);
        }
        let notes = self.manager.flush(now);
        let date = |at: Instant| self.rfc3339(at);
        let mut deliveries = Vec::new();
        for note in notes {
            let Some(channels) = self.channels.get(&note.receiver) else {
                continue;
            };
            for (channel, url) in channels {
                deliveries.push(Delivery {
                    receiver: note.receiver.clone(),
                    channel: *channel,
                    url: url.clone(),
                    group_key: note.group_key.clone(),
                    status: match note.status {
                        Status::Firing => "firing",
                        Status::Resolved => "resolved",
                    }
                    .to_owned(),
                    fingerprints: note.alerts.iter().map(|a| a.fingerprint.clone()).collect(),
                    body: channel.body(&note, &date),
                });
            }
        }
        deliveries
    }

    /// A test notification for `receiver` (the admin API's `POST
    /// /api/v1/receivers/{name}/test`): one firing info alert `SekishoTest`, one delivery per
    /// channel; `None` when there is no such receiver.
    pub fn test_deliveries(&self, receiver: &str, now: Instant) -> Option<Vec<Delivery>> {
        let channels = self.channels.get(receiver)?;
        let mut labels = crate::manager::Labels::new();
        labels.insert("alertname".to_owned(), "SekishoTest".to_owned());
        labels.insert("target".to_owned(), "gateway".to_owned());
        let mut annotations = crate::manager::Labels::new();
        annotations.insert(
            "summary".to_owned(),
            "a test notification from sekisho's admin API".to_owned(),
        );
        let fingerprint = crate::manager::fingerprint(&labels);
        let note = crate::manager::Notification {
            receiver: receiver.to_owned(),
            group_key: "{}:{alertname=\"SekishoTest\"}".to_owned(),
            status: Status::Firing,
            alerts: vec![crate::manager::NotifiedAlert {
                fingerprint: fingerprint.clone(),
                labels,
                annotations,
                severity: crate::manager::Severity::Info,
                status: Status::Firing,
                starts_at: now,
                ends_at: None,
            }],
        };
        let date = |at: Instant| self.rfc3339(at);
        Some(
            channels
                .iter()
                .map(|(channel, url)| Delivery {
                    receiver: receiver.to_owned(),
                    channel: *channel,
                    url: url.clone(),
                    group_key: note.group_key.clone(),
                    status: "firing".to_owned(),
                    fingerprints: vec![fingerprint.clone()],
                    body: channel.body(&note, &date),
                })
                .collect(),
        )
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
