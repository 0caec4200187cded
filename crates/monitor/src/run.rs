//! The monitor at work: each cycle evaluates the rules over the signals it is given, feeds the
//! alert manager, and turns each notification due into one [`Delivery`] per channel of its
//! receiver, for the outbox (`outbox.rs`) to write and its worker (`worker.rs`) to send.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use serde_json::Value;

use crate::channels::Channel;
use crate::email::Email;
use crate::history::HistoryEvent;
use crate::manager::{AlertManager, Notification, Severity, Status};
use crate::outbox::{Delivery, QueueDepth};
use crate::restore::{RestoredAlert, Told};
use crate::rules::{Evaluator, Signals};

/// The rules, the alert manager and each receiver's channels.
#[derive(Debug)]
pub struct Monitor {
    evaluator: Evaluator,
    manager: AlertManager,
    channels: ChannelsByReceiver,
    /// The e-mail settings of the receivers that have them.
    emails: BTreeMap<String, sekisho_config::EmailReceiver>,
    /// The wall clock at an instant, to date alerts.
    anchor: (Instant, SystemTime),
    /// What happened to alerts since the last [`Monitor::take_history`].
    history: Vec<HistoryEvent>,
    /// What notifications told receivers since the last [`Monitor::take_told`].
    told: Vec<Told>,
    /// The last cycle: when (Unix ms) and how long it took.
    last_run: Option<(i64, std::time::Duration)>,
    /// The outbox as the last cycle's probe found it.
    queue: QueueDepth,
}

/// The monitor's own figures, for its metrics (`metrics.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorFigures {
    /// When the last cycle ran (Unix ms).
    pub last_run_unix_ms: Option<i64>,
    /// How long it took.
    pub last_run_duration: std::time::Duration,
    /// Alerts firing now by severity (every severity, zeros included).
    pub firing: BTreeMap<&'static str, usize>,
    /// The outbox's depth as the binary last noted it.
    pub queue: QueueDepth,
    /// The age of its oldest pending row then (seconds; 0 when none).
    pub oldest_pending_seconds: f64,
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
    .chain(
        receiver
            .email
            .as_ref()
            .map(|email| (Channel::Email, format!("smtp://{}", email.smtp))),
    )
    .collect()
}

/// Each receiver's channels (with their URLs) by receiver name.
type ChannelsByReceiver = BTreeMap<String, Vec<(Channel, String)>>;

/// Each receiver's channels, and the e-mail settings of those that have them.
fn receivers(
    alerts: &sekisho_config::Alerts,
) -> (
    ChannelsByReceiver,
    BTreeMap<String, sekisho_config::EmailReceiver>,
) {
    let channels = alerts
        .receivers
        .iter()
        .map(|r| (r.get_ref().name.clone(), receiver_channels(r.get_ref())))
        .collect();
    let emails = alerts
        .receivers
        .iter()
        .filter_map(|r| Some((r.get_ref().name.clone(), r.get_ref().email.clone()?)))
        .collect();
    (channels, emails)
}

impl Monitor {
    /// A monitor for the config's `[alerts]`.
    pub fn new(alerts: &sekisho_config::Alerts, now: Instant) -> Self {
        let (channels, emails) = receivers(alerts);
        Self {
            emails,
            evaluator: Evaluator::new(crate::from_config::rules(alerts)),
            manager: AlertManager::new(crate::from_config::settings(alerts)),
            channels,
            anchor: (now, SystemTime::now()),
            history: Vec::new(),
            told: Vec::new(),
            last_run: None,
            queue: QueueDepth::default(),
        }
    }

    /// Applies a reloaded config's `[alerts]`: its rules (each rule's past kept by name, the
    /// alerts of a removed rule resolving at the next cycle), the alert manager's timings and
    /// the receivers' channels. `group_by` keeps its value until a restart.
    pub fn reconfigure(&mut self, alerts: &sekisho_config::Alerts) {
        self.evaluator.set_rules(crate::from_config::rules(alerts));
        self.manager
            .set_settings(crate::from_config::settings(alerts));
        (self.channels, self.emails) = receivers(alerts);
    }

    /// The names of the rules in force.
    pub fn rule_names(&self) -> Vec<&str> {
        self.evaluator.rule_names()
    }

    /// What happened to alerts (fired, severity changed, resolved) since the last call, in
    /// order, for the history (`history.rs`).
    pub fn take_history(&mut self) -> Vec<HistoryEvent> {
        std::mem::take(&mut self.history)
    }

    /// What the notifications of the cycles since the last call told each receiver, in order
    /// (`restore.rs`): to be written once those notifications are in the outbox.
    pub fn take_told(&mut self) -> Vec<Told> {
        std::mem::take(&mut self.told)
    }

    /// Puts back the alerts a previous run knew ([`crate::History::restorable`]), before the
    /// first cycle: each firing one to the alert manager (with what each receiver was told)
    /// and to the rules' evaluator (its `for` behind it); one whose rule is gone resolves now.
    /// A resolved one (cleared while the gateway was down) only to the manager, whose next
    /// flush tells its receivers.
    pub fn restore(&mut self, alerts: &[RestoredAlert], now: Instant) {
        for alert in alerts {
            // A receiver the config no longer has is owed nothing: forget what it was told.
            let (told, gone): (BTreeMap<_, _>, BTreeMap<_, _>) = alert
                .told
                .iter()
                .map(|(receiver, severity)| (receiver.clone(), *severity))
                .partition(|(receiver, _)| self.channels.contains_key(receiver));
            self.told
                .extend(gone.into_keys().map(|receiver| Told::Resolved {
                    fingerprint: alert.fingerprint.clone(),
                    receiver,
                }));
            if alert.resolved_at.is_some() && told.is_empty() {
                continue;
            }
            let alert = &RestoredAlert {
                told,
                ..alert.clone()
            };
            let starts_at = self.instant(alert.fired_at, now);
            let ends_at = alert.resolved_at.map(|at| self.instant(at, now));
            self.manager.restore(alert, (starts_at, ends_at), now);
            if alert.resolved_at.is_some() {
                continue;
            }
            let label = |name: &str| alert.labels.get(name).map_or("", String::as_str);
            let known =
                self.evaluator
                    .restore(label("alertname"), label("target"), alert.severity, now);
            if !known {
                self.history.push(HistoryEvent::Resolved {
                    fingerprint: alert.fingerprint.clone(),
                    at: self.unix_millis(now),
                });
                self.manager
                    .observe(alert.labels.clone(), alert.annotations.clone(), None, now);
            }
        }
    }

    /// The instant of `unix_ms` on the monotonic clock (`now` if before the clock's start).
    fn instant(&self, unix_ms: i64, now: Instant) -> Instant {
        let at = self.unix_millis(now);
        let ago = std::time::Duration::from_millis(u64::try_from(at - unix_ms).unwrap_or(0));
        now.checked_sub(ago).unwrap_or(now)
    }

    /// `at` as Unix milliseconds.
    pub fn unix_millis(&self, at: Instant) -> i64 {
        let wall = self.wall(at);
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn wall(&self, at: Instant) -> SystemTime {
        let (anchor, wall) = self.anchor;
        if at >= anchor {
            wall + (at - anchor)
        } else {
            wall - (anchor - at)
        }
    }

    /// The alert manager (active alerts, silences, acknowledgements).
    pub fn manager(&mut self) -> &mut AlertManager {
        &mut self.manager
    }

    /// One cycle at `now`: the deliveries due, one per notification and channel. Rules over
    /// metrics see no series (see [`Monitor::cycle_with`]).
    pub fn cycle(&mut self, signals: &Signals, now: Instant) -> Vec<Delivery> {
        self.cycle_with(signals, "", now)
    }

    /// As [`Monitor::cycle`], with the gateway's Prometheus text exposition (what `/metrics`
    /// serves) for the rules over metrics.
    pub fn cycle_with(
        &mut self,
        signals: &Signals,
        exposition: &str,
        now: Instant,
    ) -> Vec<Delivery> {
        let started = Instant::now();
        let samples = crate::series::parse_exposition(exposition);
        let deliveries = self.cycle_inner(signals, &samples, now);
        self.last_run = Some((self.unix_millis(now), started.elapsed()));
        deliveries
    }

    /// Whether some rule watches a metric: only then is the exposition worth encoding.
    pub fn watches_metrics(&self) -> bool {
        self.evaluator.watches_metrics()
    }

    /// Notes the outbox's depth (the binary's probe), for the metrics.
    pub fn note_queue(&mut self, depth: QueueDepth) {
        self.queue = depth;
    }

    /// The monitor's own figures at this moment.
    pub fn figures(&self) -> MonitorFigures {
        let mut firing: BTreeMap<&'static str, usize> = [
            Severity::Info,
            Severity::Warning,
            Severity::Critical,
            Severity::Emergency,
        ]
        .into_iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        for (_, severity, _) in self.manager.active(Instant::now()) {
            *firing.entry(severity.as_str()).or_default() += 1;
        }
        let oldest_pending_seconds = self.queue.oldest_created_at.map_or(0.0, |created| {
            (sekisho_db::now_millis().saturating_sub(created)) as f64 / 1000.0
        });
        MonitorFigures {
            last_run_unix_ms: self.last_run.map(|(at, _)| at),
            last_run_duration: self.last_run.map(|(_, took)| took).unwrap_or_default(),
            firing,
            queue: self.queue,
            oldest_pending_seconds,
        }
    }

    fn cycle_inner(
        &mut self,
        signals: &Signals,
        samples: &[crate::series::Sample],
        now: Instant,
    ) -> Vec<Delivery> {
        let at = self.unix_millis(now);
        for state in self.evaluator.evaluate_with(signals, samples, now) {
            let fingerprint = crate::manager::fingerprint(&state.labels);
            let before = self.manager.firing_severity(&fingerprint);
            let event = match (before, state.severity) {
                (None, Some(severity)) => Some(HistoryEvent::Fired {
                    fingerprint,
                    labels: state.labels.clone(),
                    annotations: state.annotations.clone(),
                    severity,
                    at,
                }),
                (Some(was), Some(severity)) if was != severity => Some(HistoryEvent::Severity {
                    fingerprint,
                    severity,
                    at,
                }),
                (Some(_), None) => Some(HistoryEvent::Resolved { fingerprint, at }),
                _ => None,
            };
            self.history.extend(event);
            self.manager
                .observe(state.labels, state.annotations, state.severity, now);
        }
        let notes = self.manager.flush(now);
        for note in &notes {
            if !self.channels.contains_key(&note.receiver) {
                continue;
            }
            for alert in &note.alerts {
                self.told.push(match alert.status {
                    Status::Firing => Told::Firing {
                        fingerprint: alert.fingerprint.clone(),
                        receiver: note.receiver.clone(),
                        severity: alert.severity,
                    },
                    Status::Resolved => Told::Resolved {
                        fingerprint: alert.fingerprint.clone(),
                        receiver: note.receiver.clone(),
                    },
                });
            }
        }
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
                    body: self.body(*channel, &note, &date),
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
                    body: self.body(*channel, &note, &date),
                })
                .collect(),
        )
    }

    /// The body of `note` on `channel` (an e-mail with its receiver's addresses).
    fn body(
        &self,
        channel: Channel,
        note: &Notification,
        date: &dyn Fn(Instant) -> String,
    ) -> Value {
        match (channel, self.emails.get(&note.receiver)) {
            (Channel::Email, Some(email)) => {
                serde_json::to_value(Email::of(note, email, date)).unwrap_or(Value::Null)
            }
            _ => channel.body(note, date),
        }
    }

    fn rfc3339(&self, at: Instant) -> String {
        time::OffsetDateTime::from(self.wall(at))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

/// Host and process figures from /proc, as signals of target `gateway`: `cpu` (the host's
/// busy share since the last reading, averaged over that interval), `process_cpu` (this
/// process's share of the host's CPU time over the same interval), `memory` (the host's used
/// share), `open_fds` (this process's), `network_receive_bytes_per_second` and
/// `network_transmit_bytes_per_second` (every interface but loopback, since the last reading).
#[derive(Debug, Default)]
pub struct Vitals {
    last_cpu: Option<(u64, u64)>,
    last_process: Option<u64>,
    last_network: Option<(Instant, u64, u64)>,
}

impl Vitals {
    /// Adds the vitals to `signals`; a figure that cannot be read is left out (and the first
    /// reading has no rates yet).
    pub fn sample(&mut self, signals: &mut Signals) {
        let gateway = || "gateway".to_owned();
        let process = read_process_cpu();
        if let Some((busy, total)) = read_cpu() {
            if let Some((last_busy, last_total)) = self.last_cpu {
                let dt = total.saturating_sub(last_total);
                if dt > 0 {
                    let share = busy.saturating_sub(last_busy) as f64 / dt as f64;
                    signals.insert(("cpu".to_owned(), gateway()), share);
                    if let (Some(now), Some(last)) = (process, self.last_process) {
                        let share = now.saturating_sub(last) as f64 / dt as f64;
                        signals.insert(("process_cpu".to_owned(), gateway()), share.min(1.0));
                    }
                }
            }
            self.last_cpu = Some((busy, total));
            self.last_process = process;
        }
        if let Some((received, sent)) = read_network() {
            let now = Instant::now();
            if let Some((at, last_received, last_sent)) = self.last_network {
                let seconds = now.saturating_duration_since(at).as_secs_f64();
                if seconds > 0.0 {
                    let rate = |now: u64, last: u64| now.saturating_sub(last) as f64 / seconds;
                    signals.insert(
                        ("network_receive_bytes_per_second".to_owned(), gateway()),
                        rate(received, last_received),
                    );
                    signals.insert(
                        ("network_transmit_bytes_per_second".to_owned(), gateway()),
                        rate(sent, last_sent),
                    );
                }
            }
            self.last_network = Some((now, received, sent));
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

/// This process's user and system CPU time, in the clock ticks /proc/stat counts in.
fn read_process_cpu() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12th and 13th after the name.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Bytes received and sent by every interface but loopback, since boot.
fn read_network() -> Option<(u64, u64)> {
    let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
    let mut totals = (0u64, 0u64);
    for line in dev.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        totals.0 += fields.first().copied().unwrap_or(0);
        totals.1 += fields.get(8).copied().unwrap_or(0);
    }
    Some(totals)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_vitals_of_this_host_and_process_are_read_from_proc() {
        let mut vitals = Vitals::default();
        let key = |name: &str| (name.to_owned(), "gateway".to_owned());
        let mut signals = Signals::new();
        vitals.sample(&mut signals);
        assert!(signals.contains_key(&key("memory")) && signals.contains_key(&key("open_fds")));
        // Rates need a second reading once the kernel's counters moved (a clock tick).
        for _ in 0..500 {
            signals.clear();
            vitals.sample(&mut signals);
            if signals.contains_key(&key("cpu")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for name in [
            "cpu",
            "process_cpu",
            "memory",
            "open_fds",
            "network_receive_bytes_per_second",
            "network_transmit_bytes_per_second",
        ] {
            let value = signals.get(&key(name)).copied();
            assert!(value.is_some_and(|v| v >= 0.0), "{name}: {signals:?}");
        }
        for share in ["cpu", "process_cpu", "memory"] {
            assert!(signals[&key(share)] <= 1.0, "{share}: {signals:?}");
        }
        assert!(signals[&key("open_fds")] >= 3.0);
    }
}
