//! The alert manager: which notifications go to which receiver, and when — Alertmanager's
//! semantics, on a clock the caller gives.
//!
//! - **Fingerprint**: an alert is identified by its labels (names and values, sorted), hashed
//!   ([`fingerprint`]); the same labels are the same alert.
//! - **Grouping**: alerts with equal values of `group_by` labels form one group, notified
//!   together. A new group waits `group_wait` (to gather alerts that fire together), then is
//!   evaluated every `group_interval`: what changed since a receiver's last notification (an
//!   alert new, resolved, of higher severity, or no longer muted) is sent then; an unchanged
//!   firing group is notified again after `repeat_interval`, unless every alert in it is
//!   acknowledged.
//! - **Dedupe**: per receiver, a notification is sent only when what it would say differs from
//!   what that receiver was last told, or `repeat_interval` has passed.
//! - **Silences** (label matchers, an end, a comment) and **inhibition** (a firing alert mutes
//!   the lower severities of alerts with the same `target` label) mute alerts: muted alerts are
//!   left out of notifications, and a group with only muted alerts sends nothing.
//! - **Resolution**: an alert whose condition cleared is sent once as `resolved` to every
//!   receiver that was told it was firing — and only to those: a `resolved` always follows its
//!   `firing` — then forgotten.
//! - **Escalation**: each receiver has a minimum severity; an alert reaches the receivers whose
//!   minimum it meets, so a rise in severity reaches more receivers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

mod restored;
mod silence;

pub use restored::RestoredAlert;
pub use silence::{Matcher, Silence};

/// An alert's labels: its identity (`alertname`, `target`, `severity` is not one of them).
pub type Labels = BTreeMap<String, String>;

/// How bad: ordered from `Info` to `Emergency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
    /// Everything is on fire.
    Emergency,
}

impl Severity {
    /// The severity named `name` (as [`Severity::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "info" => Some(Self::Info),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            "emergency" => Some(Self::Emergency),
            _ => None,
        }
    }

    /// The lower-case name used in labels and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Emergency => "emergency",
        }
    }
}

/// The fingerprint of an alert with `labels`: 16 hex digits of XXH3 over the sorted names and
/// values (each followed by a separator byte that labels cannot contain).
pub fn fingerprint(labels: &Labels) -> String {
    let mut bytes = Vec::with_capacity(64);
    for (name, value) in labels {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0xff);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0xff);
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// A receiver and the least severity it is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    /// Its name.
    pub name: String,
    /// Alerts below this severity do not reach it.
    pub min_severity: Severity,
}

/// Timing and grouping (Alertmanager's meanings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Labels whose values make a group.
    pub group_by: Vec<String>,
    /// A new group waits this long before its first notification.
    pub group_wait: Duration,
    /// A changed group is notified again at most this often.
    pub group_interval: Duration,
    /// An unchanged firing group is notified again after this.
    pub repeat_interval: Duration,
    /// The receivers, in order.
    pub receivers: Vec<Receiver>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            group_by: vec!["alertname".to_owned()],
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            repeat_interval: Duration::from_secs(4 * 3600),
            receivers: Vec::new(),
        }
    }
}

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    Firing,
    /// The condition cleared.
    Resolved,
}

/// One alert as a notification tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifiedAlert {
    /// Its fingerprint.
    pub fingerprint: String,
    /// Its labels.
    pub labels: Labels,
    /// Summary, runbook URL and the like.
    pub annotations: Labels,
    /// Its severity (the last while it fired, for a resolved one).
    pub severity: Severity,
    /// Firing or resolved.
    pub status: Status,
    /// When it started firing.
    pub starts_at: Instant,
    /// When it resolved.
    pub ends_at: Option<Instant>,
}

/// A notification due now for one receiver: one group's alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The receiver's name.
    pub receiver: String,
    /// The group's key: its `group_by` labels.
    pub group_key: String,
    /// Firing if any alert in it fires, else resolved.
    pub status: Status,
    /// The alerts, firing ones first, each once.
    pub alerts: Vec<NotifiedAlert>,
}

#[derive(Debug, Clone)]
struct Alert {
    labels: Labels,
    annotations: Labels,
    severity: Severity,
    starts_at: Instant,
    ends_at: Option<Instant>,
    acked: bool,
}

#[derive(Debug, Default)]
struct Group {
    /// Fingerprints of the group's alerts.
    members: HashSet<String>,
    /// When it was created (for `group_wait`).
    created: Option<Instant>,
    /// Its last evaluation.
    last_flush: Option<Instant>,
    /// Per receiver: what it was last told (fingerprint → firing severity or resolved) and when.
    told: HashMap<String, (BTreeMap<String, Option<Severity>>, Instant)>,
}

/// An alert firing now, as the admin API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    /// Its fingerprint.
    pub fingerprint: String,
    /// Its labels.
    pub labels: Labels,
    /// Its annotations.
    pub annotations: Labels,
    /// Its severity.
    pub severity: Severity,
    /// Silenced or inhibited.
    pub muted: bool,
    /// Acknowledged.
    pub acknowledged: bool,
    /// How long it has been firing.
    pub firing_for: Duration,
}

/// The alert manager's state.
#[derive(Debug)]
pub struct AlertManager {
    settings: Settings,
    alerts: HashMap<String, Alert>,
    groups: BTreeMap<String, Group>,
    silences: Vec<(u64, Silence)>,
    next_silence: u64,
}

impl AlertManager {
    /// An alert manager with `settings` and no alerts.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            alerts: HashMap::new(),
            groups: BTreeMap::new(),
            silences: Vec::new(),
            next_silence: 1,
        }
    }

    /// New settings from a reloaded config: timings and receivers apply from the next flush;
    /// `group_by` stays as it was (the groups in flight are keyed by it; a restart changes it).
    pub fn set_settings(&mut self, settings: Settings) {
        let group_by = std::mem::take(&mut self.settings.group_by);
        self.settings = Settings {
            group_by,
            ..settings
        };
    }

    fn group_key(&self, labels: &Labels) -> String {
        let mut key = String::from("{}:{");
        for (i, name) in self.settings.group_by.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(name);
            key.push_str("=\"");
            key.push_str(labels.get(name).map_or("", String::as_str));
            key.push('"');
        }
        key.push('}');
        key
    }

    /// The state of the alert with `labels` as rule evaluation found it at `now`: firing at
    /// `severity`, or cleared (`None`). Returns its fingerprint.
    pub fn observe(
        &mut self,
        labels: Labels,
        annotations: Labels,
        severity: Option<Severity>,
        now: Instant,
    ) -> String {
        let fingerprint = fingerprint(&labels);
        let key = self.group_key(&labels);
        match (severity, self.alerts.get_mut(&fingerprint)) {
            (Some(severity), Some(alert)) if alert.ends_at.is_none() => {
                if severity != alert.severity {
                    let rose = severity > alert.severity;
                    alert.severity = severity;
                    if rose {
                        // A rise re-notifies (and reaches receivers with a higher minimum).
                        alert.acked = false;
                    }
                }
                alert.annotations = annotations;
            }
            (Some(severity), _) => {
                self.alerts.insert(
                    fingerprint.clone(),
                    Alert {
                        labels,
                        annotations,
                        severity,
                        starts_at: now,
                        ends_at: None,
                        acked: false,
                    },
                );
                let group = self.groups.entry(key).or_default();
                group.members.insert(fingerprint.clone());
                group.created.get_or_insert(now);
            }
            (None, Some(alert)) if alert.ends_at.is_none() => {
                alert.ends_at = Some(now);
            }
            (None, _) => {}
        }
        fingerprint
    }

    /// Puts back an alert a previous run knew (`restore.rs`): firing since `starts_at`, or
    /// resolved at `ends_at`, and believed firing at a severity by the receivers of `told` —
    /// so a flush tells them only what changed (a `resolved` for one that cleared), and tells
    /// the others what they never heard.
    pub fn restore(
        &mut self,
        alert: &RestoredAlert,
        times: (Instant, Option<Instant>),
        now: Instant,
    ) {
        let fingerprint = alert.fingerprint.clone();
        let key = self.group_key(&alert.labels);
        self.alerts.insert(
            fingerprint.clone(),
            Alert {
                labels: alert.labels.clone(),
                annotations: alert.annotations.clone(),
                severity: alert.severity,
                starts_at: times.0,
                ends_at: times.1,
                acked: alert.acked,
            },
        );
        let group = self.groups.entry(key).or_default();
        group.members.insert(fingerprint.clone());
        group.created.get_or_insert(now);
        for (receiver, severity) in &alert.told {
            group
                .told
                .entry(receiver.clone())
                .or_insert_with(|| (BTreeMap::new(), now))
                .0
                .insert(fingerprint.clone(), Some(*severity));
        }
    }

    /// The severity of the alert `fingerprint` while it fires; `None` when it does not.
    pub fn firing_severity(&self, fingerprint: &str) -> Option<Severity> {
        self.alerts
            .get(fingerprint)
            .filter(|a| a.ends_at.is_none())
            .map(|a| a.severity)
    }

    /// Acknowledges a firing alert: no repeat notifications for it until it resolves or its
    /// severity rises. False if there is no such alert.
    pub fn acknowledge(&mut self, fingerprint: &str) -> bool {
        match self.alerts.get_mut(fingerprint) {
            Some(alert) => {
                alert.acked = true;
                true
            }
            None => false,
        }
    }

    /// Adds a silence; its id.
    pub fn silence(&mut self, silence: Silence) -> u64 {
        let id = self.next_silence;
        self.next_silence += 1;
        self.silences.push((id, silence));
        id
    }

    /// Adds (or replaces) the silence `id`: one the database numbered, or put back after a
    /// restart. Later ids of [`Manager::silence`] come after it.
    pub fn silence_with_id(&mut self, id: u64, silence: Silence) {
        self.silences.retain(|(known, _)| *known != id);
        self.silences.push((id, silence));
        self.next_silence = self.next_silence.max(id + 1);
    }

    /// The silences in force at `now`, with their ids.
    pub fn silences(&self, now: Instant) -> Vec<(u64, Silence)> {
        self.silences
            .iter()
            .filter(|(_, s)| s.until > now)
            .cloned()
            .collect()
    }

    /// Ends a silence at once; false if there is no such silence.
    pub fn expire_silence(&mut self, id: u64) -> bool {
        let before = self.silences.len();
        self.silences.retain(|(i, _)| *i != id);
        self.silences.len() != before
    }

    /// The alerts firing at `now`, most severe first.
    pub fn active_alerts(&self, now: Instant) -> Vec<ActiveAlert> {
        let mut active: Vec<ActiveAlert> = self
            .alerts
            .iter()
            .filter(|(_, a)| a.ends_at.is_none())
            .map(|(fp, a)| ActiveAlert {
                fingerprint: fp.clone(),
                labels: a.labels.clone(),
                annotations: a.annotations.clone(),
                severity: a.severity,
                muted: self.is_muted(a, now),
                acknowledged: a.acked,
                firing_for: now.saturating_duration_since(a.starts_at),
            })
            .collect();
        active.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.fingerprint.cmp(&b.fingerprint))
        });
        active
    }

    /// Whether the alert is muted at `now`, by a silence or by inhibition.
    pub fn muted(&self, fingerprint: &str, now: Instant) -> bool {
        self.alerts
            .get(fingerprint)
            .is_some_and(|alert| self.is_muted(alert, now))
    }

    fn is_muted(&self, alert: &Alert, now: Instant) -> bool {
        let silenced = self.silences.iter().any(|(_, silence)| {
            silence.until > now && silence.matchers.iter().all(|m| m.matches(&alert.labels))
        });
        let inhibited = alert.ends_at.is_none()
            && alert.labels.get("target").is_some_and(|target| {
                self.alerts.values().any(|other| {
                    other.ends_at.is_none()
                        && other.severity > alert.severity
                        && other.labels.get("target") == Some(target)
                })
            });
        silenced || inhibited
    }

    /// The alerts firing now, with their fingerprints, severities and whether they are muted.
    pub fn active(&self, now: Instant) -> Vec<(String, Severity, bool)> {
        let mut active: Vec<_> = self
            .alerts
            .iter()
            .filter(|(_, alert)| alert.ends_at.is_none())
            .map(|(fp, alert)| (fp.clone(), alert.severity, self.is_muted(alert, now)))
            .collect();
        active.sort();
        active
    }

    /// The notifications due at `now`; what they say is recorded as told, and resolved alerts
    /// every receiver has been told about are forgotten.
    pub fn flush(&mut self, now: Instant) -> Vec<Notification> {
        self.silences.retain(|(_, silence)| silence.until > now);
        let mut out = Vec::new();
        let keys: Vec<String> = self.groups.keys().cloned().collect();
        for key in keys {
            let Some(group) = self.groups.get(&key) else {
                continue;
            };
            // Evaluated every group_interval after the first; whether anything is sent is the
            // per-receiver dedupe's decision (a silence that ended makes news without a change).
            let due = match (group.created, group.last_flush) {
                (Some(created), None) => now >= created + self.settings.group_wait,
                (_, Some(last)) => now >= last + self.settings.group_interval,
                (None, None) => false,
            };
            if !due {
                continue;
            }
            let notes = self.notifications_of(&key, now);
            let Some(group) = self.groups.get_mut(&key) else {
                continue;
            };
            group.last_flush = Some(now);
            for (note, told) in notes {
                group.told.insert(note.receiver.clone(), (told, now));
                out.push(note);
            }
            self.forget_resolved(&key);
        }
        out
    }

    /// The notifications of the group `key` for each receiver, with what each then knows.
    fn notifications_of(
        &self,
        key: &str,
        now: Instant,
    ) -> Vec<(Notification, BTreeMap<String, Option<Severity>>)> {
        let Some(group) = self.groups.get(key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for receiver in &self.settings.receivers {
            let previous = group.told.get(&receiver.name);
            let mut told = BTreeMap::new();
            let mut alerts = Vec::new();
            let mut unacked_firing = false;
            for fp in &group.members {
                let Some(alert) = self.alerts.get(fp) else {
                    continue;
                };
                let was_told_firing = previous
                    .and_then(|(told, _)| told.get(fp))
                    .is_some_and(Option::is_some);
                let status = if alert.ends_at.is_some() {
                    // A resolved goes only where its firing went.
                    if !was_told_firing {
                        continue;
                    }
                    Status::Resolved
                } else {
                    if alert.severity < receiver.min_severity || self.is_muted(alert, now) {
                        // Muted or below this receiver: if it was told firing, it stays so.
                        if was_told_firing {
                            told.insert(fp.clone(), Some(alert.severity));
                        }
                        continue;
                    }
                    unacked_firing |= !alert.acked;
                    Status::Firing
                };
                told.insert(
                    fp.clone(),
                    (status == Status::Firing).then_some(alert.severity),
                );
                alerts.push(NotifiedAlert {
                    fingerprint: fp.clone(),
                    labels: alert.labels.clone(),
                    annotations: alert.annotations.clone(),
                    severity: alert.severity,
                    status,
                    starts_at: alert.starts_at,
                    ends_at: alert.ends_at,
                });
            }
            if alerts.is_empty() {
                continue;
            }
            let same = previous.is_some_and(|(last, _)| *last == told);
            let repeat_due = previous
                .is_some_and(|(_, at)| now >= *at + self.settings.repeat_interval)
                && unacked_firing;
            if same && !repeat_due {
                continue;
            }
            alerts.sort_by(|a, b| {
                (a.status != Status::Firing, &a.fingerprint)
                    .cmp(&(b.status != Status::Firing, &b.fingerprint))
            });
            let status = if alerts.iter().any(|a| a.status == Status::Firing) {
                Status::Firing
            } else {
                Status::Resolved
            };
            // What the receiver knows after this: resolved ones are done with.
            told.retain(|_, severity| severity.is_some());
            out.push((
                Notification {
                    receiver: receiver.name.clone(),
                    group_key: key.to_owned(),
                    status,
                    alerts,
                },
                told,
            ));
        }
        out
    }

    /// Forgets the group's resolved alerts that no receiver still believes firing.
    fn forget_resolved(&mut self, key: &str) {
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        let alerts = &mut self.alerts;
        group.members.retain(|fp| {
            let resolved = alerts.get(fp).is_none_or(|a| a.ends_at.is_some());
            let still_told = group
                .told
                .values()
                .any(|(told, _)| told.get(fp).is_some_and(Option::is_some));
            if resolved && !still_told {
                alerts.remove(fp);
                false
            } else {
                true
            }
        });
        if group.members.is_empty() {
            self.groups.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
