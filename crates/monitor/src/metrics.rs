//! Monitoring the monitor: its own figures as Prometheus series, appended by the admin listener
//! to the gateway's `/metrics` — when the evaluator last ran and how long it took, the alerts
//! firing by severity, the outbox's depth and oldest pending notification (as of the last
//! cycle), and each receiver's delivery attempts by outcome since the start.

use std::fmt::Write;

use crate::outbox::Outbox;
use crate::run::Monitor;

/// The series' names, one place.
pub const LAST_RUN: &str = "sekisho_monitor_last_run_timestamp_seconds";
/// How long the last cycle took.
pub const RUN_DURATION: &str = "sekisho_monitor_run_duration_seconds";
/// Alerts firing now, by severity.
pub const ALERTS_FIRING: &str = "sekisho_alerts_firing";
/// Pending notifications.
pub const PENDING: &str = "sekisho_notifications_pending";
/// Age of the oldest pending notification.
pub const OLDEST_PENDING: &str = "sekisho_notification_oldest_pending_seconds";
/// Delivery attempts by receiver, channel and outcome (a counter).
pub const DELIVERIES: &str = "sekisho_notification_deliveries";

/// The monitor's series in the Prometheus text format (0.0.4), or in OpenMetrics when
/// `openmetrics` (counters then carry `_total` only on the sample, as OpenMetrics wants).
pub fn encode(monitor: &Monitor, outbox: Option<&Outbox>, openmetrics: bool) -> String {
    let mut text = String::new();
    let figures = monitor.figures();
    gauge(
        &mut text,
        LAST_RUN,
        "When the monitor last evaluated its rules (Unix seconds).",
    );
    let _ = writeln!(
        text,
        "{LAST_RUN} {}",
        figures
            .last_run_unix_ms
            .map_or(0.0, |ms| ms as f64 / 1000.0)
    );
    gauge(
        &mut text,
        RUN_DURATION,
        "How long the monitor's last cycle took (evaluation, alert manager, bodies).",
    );
    let _ = writeln!(
        text,
        "{RUN_DURATION} {}",
        figures.last_run_duration.as_secs_f64()
    );
    gauge(&mut text, ALERTS_FIRING, "Alerts firing now, by severity.");
    for (severity, count) in &figures.firing {
        let _ = writeln!(text, "{ALERTS_FIRING}{{severity=\"{severity}\"}} {count}");
    }
    gauge(
        &mut text,
        PENDING,
        "Notifications waiting in the outbox, as of the monitor's last cycle.",
    );
    let _ = writeln!(text, "{PENDING} {}", figures.queue.pending);
    gauge(
        &mut text,
        OLDEST_PENDING,
        "Age of the oldest pending notification, as of the monitor's last cycle (0: none).",
    );
    let _ = writeln!(text, "{OLDEST_PENDING} {}", figures.oldest_pending_seconds);
    if let Some(outbox) = outbox {
        let family = if openmetrics {
            DELIVERIES.to_owned()
        } else {
            format!("{DELIVERIES}_total")
        };
        let _ = writeln!(
            text,
            "# HELP {family} Delivery attempts by this gateway since it started, by receiver, channel and outcome (delivered, failed, dead).\n# TYPE {family} counter"
        );
        for ((receiver, channel), tally) in outbox.tallies() {
            for (outcome, count) in [
                ("delivered", tally.delivered),
                ("failed", tally.failed),
                ("dead", tally.dead),
            ] {
                let _ = writeln!(
                    text,
                    "{DELIVERIES}_total{{receiver=\"{}\",channel=\"{channel}\",outcome=\"{outcome}\"}} {count}",
                    escape(&receiver)
                );
            }
        }
    }
    text
}

fn gauge(text: &mut String, name: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// A label value as the exposition format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
