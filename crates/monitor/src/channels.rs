//! What a notification looks like on each channel: Alertmanager's webhook payload (version
//! "4"), Alertmanager's own API (`POST /api/v2/alerts`, a list of postable alerts), a Slack
//! incoming webhook (an attachment coloured by severity) and a Discord webhook (an embed
//! coloured alike). Every one carries each alert's fingerprint, so a receiver can drop the rare
//! duplicate that at-least-once delivery allows.
//!
//! Pure functions of the notification and a clock that dates it; sending is the outbox's. The
//! e-mail channel's message is in `email.rs`.

use serde_json::{json, Value};

use crate::manager::{Notification, NotifiedAlert, Severity, Status};

/// A receiver's channel: how a notification is shaped and where it is POSTed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Alertmanager's webhook payload (version "4") to the URL as given.
    Webhook,
    /// A real Alertmanager: postable alerts to `URL/api/v2/alerts`.
    Alertmanager,
    /// A Slack incoming webhook.
    Slack,
    /// A Discord webhook.
    Discord,
    /// E-mail over SMTP (`email.rs`); its "URL" is `smtp://host:port`.
    Email,
}

impl Channel {
    /// Its name in the config and the delivery log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Alertmanager => "alertmanager",
            Self::Slack => "slack",
            Self::Discord => "discord",
            Self::Email => "email",
        }
    }

    /// The URL a notification is POSTed to, from the one configured.
    pub fn endpoint(self, configured: &str) -> String {
        match self {
            Self::Alertmanager => format!("{}/api/v2/alerts", configured.trim_end_matches('/')),
            _ => configured.to_owned(),
        }
    }

    /// The body of `note` on this channel; `date` turns an instant into RFC 3339. An e-mail
    /// also needs the receiver's addresses: its body is the e-mail module's `Email::of`, and here
    /// `null`.
    pub fn body(self, note: &Notification, date: &dyn Fn(std::time::Instant) -> String) -> Value {
        match self {
            Self::Webhook => webhook(note, date),
            Self::Alertmanager => alertmanager(note, date),
            Self::Slack => slack(note),
            Self::Discord => discord(note),
            Self::Email => Value::Null,
        }
    }
}

pub(crate) fn status_str(status: Status) -> &'static str {
    match status {
        Status::Firing => "firing",
        Status::Resolved => "resolved",
    }
}

/// The alert's labels with its severity, as Alertmanager shows them.
fn labels_of(alert: &NotifiedAlert) -> crate::manager::Labels {
    let mut labels = alert.labels.clone();
    labels.insert("severity".to_owned(), alert.severity.as_str().to_owned());
    labels
}

/// Alertmanager's webhook payload (version "4").
pub fn webhook(note: &Notification, date: &dyn Fn(std::time::Instant) -> String) -> Value {
    let alerts: Vec<Value> = note
        .alerts
        .iter()
        .map(|a| {
            json!({
                "status": status_str(a.status),
                "labels": labels_of(a),
                "annotations": a.annotations,
                "startsAt": date(a.starts_at),
                "endsAt": a.ends_at.map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), date),
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
        "status": status_str(note.status),
        "receiver": note.receiver,
        "groupLabels": common,
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": alerts,
    })
}

/// Alertmanager's `POST /api/v2/alerts` body: one postable alert each. A firing alert has no
/// `endsAt` (Alertmanager keeps it until told otherwise or its resolve timeout); a resolved one
/// ends when it cleared. The fingerprint rides as an annotation (Alertmanager computes its own
/// from the labels, which are the same).
pub fn alertmanager(note: &Notification, date: &dyn Fn(std::time::Instant) -> String) -> Value {
    let alerts: Vec<Value> = note
        .alerts
        .iter()
        .map(|a| {
            let mut annotations = a.annotations.clone();
            annotations.insert("fingerprint".to_owned(), a.fingerprint.clone());
            let mut alert = json!({
                "labels": labels_of(a),
                "annotations": annotations,
                "startsAt": date(a.starts_at),
            });
            if let (Some(ends), Some(object)) = (a.ends_at, alert.as_object_mut()) {
                object.insert("endsAt".to_owned(), Value::String(date(ends)));
            }
            alert
        })
        .collect();
    Value::Array(alerts)
}

/// The colour of a notification: green once resolved, else by its highest severity.
pub fn colour(note: &Notification) -> u32 {
    if note.status == Status::Resolved {
        return RESOLVED_COLOUR;
    }
    let highest = note
        .alerts
        .iter()
        .filter(|a| a.status == Status::Firing)
        .map(|a| a.severity)
        .max()
        .unwrap_or(Severity::Info);
    severity_colour(highest)
}

/// The seed's colour of a severity (info blue, warning orange, critical red, emergency dark red).
pub fn severity_colour(severity: Severity) -> u32 {
    match severity {
        Severity::Info => 0x43_9F_E0,
        Severity::Warning => 0xFF_A5_00,
        Severity::Critical => 0xFF_00_00,
        Severity::Emergency => 0x8B_00_00,
    }
}

/// The colour of a resolved notification or alert.
pub const RESOLVED_COLOUR: u32 = 0x2E_B6_7D;

pub(crate) fn title(note: &Notification) -> String {
    let name = note
        .alerts
        .first()
        .and_then(|a| a.labels.get("alertname"))
        .map_or("alert", String::as_str);
    format!(
        "[{}] {name} ({} alert{})",
        status_str(note.status).to_uppercase(),
        note.alerts.len(),
        if note.alerts.len() == 1 { "" } else { "s" }
    )
}

/// One line per alert: severity, target, summary and fingerprint.
pub(crate) fn lines(note: &Notification) -> String {
    note.alerts
        .iter()
        .map(|a| {
            let target = a.labels.get("target").map_or("", String::as_str);
            let summary = a.annotations.get("summary").map_or("", String::as_str);
            let runbook = a
                .annotations
                .get("runbook_url")
                .map(|url| format!(" — runbook: {url}"))
                .unwrap_or_default();
            format!(
                "• {} {} {target}: {summary}{runbook} (fingerprint {})",
                status_str(a.status),
                a.severity.as_str(),
                a.fingerprint
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Slack incoming webhook's message: a fallback `text` and one attachment coloured by
/// severity.
pub fn slack(note: &Notification) -> Value {
    let title = title(note);
    json!({
        "text": title,
        "attachments": [{
            "color": format!("#{:06X}", colour(note)),
            "title": title,
            "text": lines(note),
            "footer": format!("sekisho · group {}", note.group_key),
        }],
    })
}

/// A Discord webhook's message: `content` and one embed coloured by severity.
pub fn discord(note: &Notification) -> Value {
    let title = title(note);
    json!({
        "content": title,
        "embeds": [{
            "title": title,
            "description": lines(note),
            "color": colour(note),
            "footer": { "text": format!("sekisho · group {}", note.group_key) },
        }],
    })
}

/// What the delivery log shows of a receiver's URL: scheme, host, port and (except for Slack and
/// Discord, whose path is the webhook's secret) the path — never credentials or a query string,
/// which may hold tokens.
pub fn shown_url(channel: &str, url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return "(not shown)".to_owned();
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return "(not shown)".to_owned();
    };
    let host = match authority.port_u16() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    // `Uri::path` says "/" for a URL without a path (`smtp://host:25`): show what was written.
    let has_path = url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    let path = match channel {
        "slack" | "discord" => "/…",
        _ if has_path => uri.path(),
        _ => "",
    };
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_shows_no_credentials_query_or_chat_webhook_secret() {
        assert_eq!(
            shown_url(
                "webhook",
                "https://ops:s3cret@alerts.example:8443/hook?token=abc"
            ),
            "https://alerts.example:8443/hook"
        );
        assert_eq!(
            shown_url(
                "slack",
                "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
            ),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            shown_url("discord", "https://discord.com/api/webhooks/1/SECRET"),
            "https://discord.com/…"
        );
        assert_eq!(
            shown_url("alertmanager", "http://127.0.0.1:9093/api/v2/alerts"),
            "http://127.0.0.1:9093/api/v2/alerts"
        );
        assert_eq!(
            shown_url("email", "smtp://127.0.0.1:2525"),
            "smtp://127.0.0.1:2525"
        );
        assert_eq!(shown_url("webhook", "not a url"), "(not shown)");
    }
}
