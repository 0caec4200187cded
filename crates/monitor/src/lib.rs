//! sekisho-monitor: what the gateway tells operators, and when.
//!
//! This first part is the alert manager's state machine ([`AlertManager`]), with Alertmanager's
//! semantics and no I/O and no clock of its own: rule evaluation feeds it the state of each
//! alert ([`AlertManager::observe`]), and each [`AlertManager::flush`] says which notifications
//! are due now, per receiver. Delivering them (webhook, Alertmanager, Slack, e-mail) through a
//! durable queue, the vitals and the rules are the next parts (issue 16).

mod manager;

pub use manager::{
    fingerprint, AlertManager, Labels, Matcher, Notification, NotifiedAlert, Receiver, Settings,
    Severity, Silence, Status,
};
