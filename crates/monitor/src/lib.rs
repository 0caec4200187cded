//! sekisho-monitor: what the gateway tells operators, and when.
//!
//! So far: the alert rules over signals ([`Evaluator`], with the seeds' [`default_rules`]) and
//! the alert manager's state machine ([`AlertManager`]), with Alertmanager's semantics — no I/O
//! and no clock of their own: each evaluation's [`AlertState`]s go to
//! [`AlertManager::observe`], and each [`AlertManager::flush`] says which notifications are due
//! now, per receiver. Delivering them (webhook, Alertmanager, Slack, e-mail) through a
//! durable queue, the vitals and the rules are the next parts (issue 16).

pub mod channels;
pub mod from_config;
mod manager;
pub mod outbox;
pub mod probes;
mod rules;
mod run;
pub mod worker;

pub use channels::Channel;
pub use manager::{
    fingerprint, ActiveAlert, AlertManager, Labels, Matcher, Notification, NotifiedAlert, Receiver,
    Settings, Severity, Silence, Status,
};
pub use outbox::{DeliveryState, LoggedNotification, Outbox, OutboxSettings, QueueDepth};
pub use rules::{default_rules, AlertState, Condition, Direction, Evaluator, Rule, Signals};
pub use run::{receiver_channels, Delivery, Monitor, Vitals};
