//! `[monitor]` and `[alerts]`: how often the gateway looks at itself, the alert rules, the
//! receivers, and the alert manager's timing (CONTRACT.md "Monitoring, alerting and
//! notifications").

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{default_true, Spanned};
use crate::duration::{ConfigDuration, NonZeroDuration};

/// The signals a threshold rule may watch.
pub const SIGNALS: &[&str] = &[
    "cpu",
    "process_cpu",
    "memory",
    "disk",
    "open_fds",
    "upstream_error_rate",
    "upstream_latency_p95",
    "route_error_rate",
    "circuit_open",
    "no_healthy_targets",
    "redis_rtt",
    "database_rtt",
    "tls_expiry_days",
    "backup_age",
    "login_failures_per_minute",
    "notifications_pending",
    "notification_oldest_pending_seconds",
    "network_receive_bytes_per_second",
    "network_transmit_bytes_per_second",
];

/// The names of the shipped default rules (`sekisho-monitor` holds them; its tests check that
/// the two lists agree), which `[alerts] disable` may name.
pub const DEFAULT_RULES: &[&str] = &[
    "HighCpu",
    "HighMemory",
    "SlowResponses",
    "ServerErrors",
    "NoHealthyTarget",
    "CircuitOpen",
    "BackupTooOld",
    "TlsExpiring",
    "FailedLoginBurst",
    "NotificationsStuck",
];

/// `[monitor]`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    /// How often vitals and probes are taken and rules evaluated.
    #[serde(default = "default_interval")]
    pub interval: NonZeroDuration,
}

impl Default for Monitor {
    fn default() -> Self {
        Self {
            interval: default_interval(),
        }
    }
}

fn default_interval() -> NonZeroDuration {
    NonZeroDuration(std::time::Duration::from_secs(10))
}

/// `[alerts]`: the rules, the receivers and the alert manager's timing.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// A new group of alerts waits this long before its first notification.
    #[serde(default = "default_group_wait")]
    pub group_wait: ConfigDuration,
    /// A changed group is notified again at most this often.
    #[serde(default = "default_group_interval")]
    pub group_interval: NonZeroDuration,
    /// An unchanged firing group is notified again after this.
    #[serde(default = "default_repeat_interval")]
    pub repeat_interval: NonZeroDuration,
    /// Labels whose values make a group (Alertmanager's `group_by`).
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    /// The shipped default rules (the seeds'); false turns them all off.
    #[serde(default = "default_true")]
    pub default_rules: bool,
    /// Default rules turned off by name.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub disable: Vec<Spanned<String>>,
    /// The alert rules, in addition to the defaults.
    #[serde(default)]
    #[schemars(with = "Vec<AlertRule>")]
    pub rules: Vec<Spanned<AlertRule>>,
    /// Where notifications go.
    #[serde(default)]
    #[schemars(with = "Vec<AlertReceiver>")]
    pub receivers: Vec<Spanned<AlertReceiver>>,
    /// Resolved alerts are kept this long in the alert history, then removed.
    #[serde(default = "default_history_retention")]
    pub history_retention: NonZeroDuration,
    /// `[alerts.outbox]`: retries, giving up, retention (see [`Alerts::outbox`]).
    #[serde(default, rename = "outbox")]
    #[schemars(with = "Option<Outbox>")]
    pub outbox_section: Option<Spanned<Outbox>>,
}

impl Alerts {
    /// The outbox's settings, the defaults where the config has no `[alerts.outbox]`.
    pub fn outbox(&self) -> Outbox {
        self.outbox_section
            .as_ref()
            .map(|o| o.get_ref().clone())
            .unwrap_or_default()
    }
}

/// `[alerts.outbox]`: how the durable notification queue retries and when it gives up.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outbox {
    /// The wait after the first failed attempt; each failure doubles it (with jitter).
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: NonZeroDuration,
    /// The longest wait between two attempts.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: NonZeroDuration,
    /// A notification not delivered this long after it was written is dead (given up).
    #[serde(default = "default_max_age")]
    pub max_age: NonZeroDuration,
    /// A notification is dead after this many failed attempts; unset: only `max_age` counts.
    #[serde(default)]
    pub max_attempts: Option<std::num::NonZeroU32>,
    /// Delivered and dead notifications are kept this long (the delivery log), then removed.
    #[serde(default = "default_retention")]
    pub retention: NonZeroDuration,
    /// Deliveries in flight at once, per gateway instance.
    #[serde(default = "default_concurrency")]
    pub concurrency: std::num::NonZeroU32,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            max_age: default_max_age(),
            max_attempts: None,
            retention: default_retention(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_backoff_initial() -> NonZeroDuration {
    NonZeroDuration(std::time::Duration::from_millis(500))
}

fn default_backoff_max() -> NonZeroDuration {
    NonZeroDuration(std::time::Duration::from_secs(60))
}

fn default_max_age() -> NonZeroDuration {
    NonZeroDuration(std::time::Duration::from_secs(24 * 3600))
}

fn default_retention() -> NonZeroDuration {
    NonZeroDuration(std::time::Duration::from_secs(7 * 24 * 3600))
}

fn default_concurrency() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::MIN.saturating_add(15)
}

impl Default for Alerts {
    fn default() -> Self {
        Self {
            group_wait: default_group_wait(),
            group_interval: default_group_interval(),
            repeat_interval: default_repeat_interval(),
            group_by: default_group_by(),
            default_rules: true,
            disable: Vec::new(),
            rules: Vec::new(),
            receivers: Vec::new(),
            history_retention: default_history_retention(),
            outbox_section: None,
        }
    }
}

fn default_history_retention() -> NonZeroDuration {
    NonZeroDuration(std::time::Duration::from_secs(90 * 24 * 3600))
}

fn default_group_wait() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(30))
}

fn default_group_interval() -> NonZeroDuration {
    NonZeroDuration(std::time::Duration::from_secs(300))
}

fn default_repeat_interval() -> NonZeroDuration {
    NonZeroDuration(std::time::Duration::from_secs(4 * 3600))
}

fn default_group_by() -> Vec<String> {
    vec!["alertname".to_owned()]
}

/// A severity, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertSeverity {
    /// Worth knowing.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
    /// Everything is on fire.
    Emergency,
}

/// Which way a threshold is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertDirection {
    /// value ≥ threshold.
    #[default]
    Above,
    /// value ≤ threshold (days to a certificate's expiry).
    Below,
}

/// What a threshold rule compares with its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertFunction {
    /// The latest reading.
    Value,
    /// The mean of the readings within `window`.
    Avg,
    /// The per-second increase over `window` of a counter (a fall is a reset, as Prometheus's
    /// `rate` takes it).
    Rate,
}

impl AlertFunction {
    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Value => "value",
            Self::Avg => "avg",
            Self::Rate => "rate",
        }
    }
}

/// `[[alerts.rules]]`: a threshold rule over a signal, or a compound rule over other rules.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// The alert's name (`alertname`).
    pub name: String,
    /// The signal watched (a threshold rule); see [`SIGNALS`].
    #[serde(default)]
    pub signal: Option<String>,
    /// A series of the gateway's `/metrics` watched instead of a signal (a threshold rule), by
    /// its sample name as the text exposition writes it (`sekisho_requests_total`): one alert
    /// per series that matches `match`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub metric: Option<Spanned<String>>,
    /// With `metric`: the labels a series must have, with these values.
    #[serde(default, rename = "match")]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub match_labels: Option<Spanned<BTreeMap<String, String>>>,
    /// What is compared with the thresholds: the latest reading (`value`, the default without
    /// `window`), the readings' mean over `window` (`avg`, the default with one), or the
    /// per-second increase of a counter over `window` (`rate`).
    #[serde(default)]
    #[schemars(with = "Option<AlertFunction>")]
    pub function: Option<Spanned<AlertFunction>>,
    /// Only this upstream (for upstream signals).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Only this route (for route signals).
    #[serde(default)]
    pub route: Option<String>,
    /// The window `avg` and `rate` are taken over.
    #[serde(default)]
    #[schemars(with = "Option<NonZeroDuration>")]
    pub window: Option<Spanned<NonZeroDuration>>,
    /// Which way is worse.
    #[serde(default)]
    pub direction: AlertDirection,
    /// Threshold of the info severity.
    #[serde(default)]
    pub info: Option<f64>,
    /// Threshold of the warning severity.
    #[serde(default)]
    pub warning: Option<f64>,
    /// Threshold of the critical severity.
    #[serde(default)]
    pub critical: Option<f64>,
    /// Threshold of the emergency severity.
    #[serde(default)]
    pub emergency: Option<f64>,
    /// A compound rule: fires while all of these rules fire.
    #[serde(default)]
    pub all_of: Vec<String>,
    /// A compound rule: fires while any of these rules fires.
    #[serde(default)]
    pub any_of: Vec<String>,
    /// A compound rule's severity.
    #[serde(default)]
    pub severity: Option<AlertSeverity>,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for")]
    pub for_: ConfigDuration,
    /// Summary, runbook URL and the like.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Extra labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl AlertRule {
    /// What it compares: `function`, or `avg` with a `window` and `value` without.
    pub fn function(&self) -> AlertFunction {
        match (&self.function, &self.window) {
            (Some(function), _) => *function.get_ref(),
            (None, Some(_)) => AlertFunction::Avg,
            (None, None) => AlertFunction::Value,
        }
    }

    /// The thresholds given, by severity.
    pub fn thresholds(&self) -> Vec<(AlertSeverity, f64)> {
        [
            (AlertSeverity::Info, self.info),
            (AlertSeverity::Warning, self.warning),
            (AlertSeverity::Critical, self.critical),
            (AlertSeverity::Emergency, self.emergency),
        ]
        .into_iter()
        .filter_map(|(severity, value)| value.map(|v| (severity, v)))
        .collect()
    }
}

/// `[alerts.receivers.email]`: e-mail over SMTP (no authentication: a local relay).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailReceiver {
    /// The SMTP server, `host:port`.
    pub smtp: String,
    /// The sender (`ops@example.com` or `Sekisho <ops@example.com>`).
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// Upgrade the connection with STARTTLS, and refuse to send when the server does not offer
    /// it (nothing goes out in the clear once asked).
    #[serde(default)]
    pub starttls: bool,
    /// A PEM file of CA certificates to trust for STARTTLS besides the system's (a private
    /// relay's own CA).
    #[serde(default)]
    pub ca: Option<String>,
    /// The user to log in as (SMTP AUTH, PLAIN or LOGIN), with `password_file`; only over
    /// STARTTLS.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the SMTP password (its first line): read at each send, never copied into
    /// the config, the outbox or a log (a mounted secret, as Docker and Kubernetes give them).
    #[serde(default)]
    pub password_file: Option<String>,
}

/// `[[alerts.receivers]]`: one or more channels, and the least severity it is told about.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertReceiver {
    /// Its name.
    pub name: String,
    /// An Alertmanager-style webhook (payload version "4").
    #[serde(default)]
    pub webhook: Option<String>,
    /// A real Alertmanager: alerts are pushed to its `/api/v2/alerts`.
    #[serde(default)]
    pub alertmanager: Option<String>,
    /// A Slack incoming webhook.
    #[serde(default)]
    pub slack: Option<String>,
    /// A Discord webhook.
    #[serde(default)]
    pub discord: Option<String>,
    /// E-mail over SMTP.
    #[serde(default)]
    pub email: Option<EmailReceiver>,
    /// A PEM file of CA certificates its `https://` URLs (webhook, alertmanager, slack,
    /// discord) are also trusted with, besides the system's store (a private receiver's own CA);
    /// relative to the config file's directory. Certificates are always verified, and their name
    /// checked against the URL's host.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// Alerts below this severity do not reach it.
    #[serde(default = "default_min_severity")]
    pub min_severity: AlertSeverity,
}

fn default_min_severity() -> AlertSeverity {
    AlertSeverity::Info
}
