//! sekisho-monitor: what the gateway tells operators, and when — and that it was told.
//!
//! The alert rules over signals and over any exported metric ([`Evaluator`], [`series`], with
//! the seeds' [`default_rules`]) and the alert
//! manager's state machine ([`AlertManager`]), with Alertmanager's semantics — no I/O and no
//! clock of their own: each evaluation's [`AlertState`]s go to [`AlertManager::observe`], and
//! each [`AlertManager::flush`] says which notifications are due now, per receiver.
//! [`Monitor::cycle`] turns those into one [`Delivery`] per channel ([`channels`]: webhook,
//! Alertmanager, Slack, Discord; [`email`]: SMTP); the [`Outbox`] writes each to the database before anything is
//! sent, and [`worker::run`] delivers them (over [`https::Clients`]), with retries, order per
//! group, and a delivery log.
//! [`probes`] and [`Vitals`] give the signals that need I/O; [`metrics`] the monitor's own
//! series for `/metrics`. [`History`] keeps each alert's
//! episodes (fired, acknowledged, resolved) in the database, with statistics, and [`restore`]
//! puts back after a restart the alerts that fired and what each receiver was told.
//!
//! What it refuses to do: send a notification that is not a row first, or know the gateway
//! (the binary hands it the gateway's figures as [`Signals`]), or send to an `https://` receiver
//! whose certificate does not verify ([`https`]).

pub mod channels;
pub mod email;
pub mod from_config;
pub mod history;
pub mod https;
mod manager;
pub mod metrics;
pub mod outbox;
pub mod probes;
pub mod restore;
mod rules;
mod run;
pub mod series;
pub mod tasks;
pub mod worker;

pub use channels::Channel;
pub use history::{
    History, HistoryEntry, HistoryEvent, HistoryFilter, HistoryStats, StoredSilence,
};
pub use manager::{
    fingerprint, ActiveAlert, AlertManager, Labels, Matcher, Notification, NotifiedAlert, Receiver,
    Settings, Severity, Silence, Status,
};
pub use outbox::{
    Delivery, DeliveryState, LoggedNotification, Outbox, OutboxSettings, QueueDepth, Tally,
};
pub use restore::{RestoredAlert, Told};
pub use rules::{
    default_rules, AlertState, Condition, Direction, Evaluator, Rule, Signals, Source,
};
pub use run::{receiver_channels, Monitor, MonitorFigures, Vitals};
pub use series::{Function, Sample, Selector};
pub use tasks::{BatchRun, Task, TaskFailure, TaskRunner, TASK_CHANNEL};

/// An error with its sources: hyper's own message ("client error (Connect)") says little.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
