//! The demo's alert receiver: a webhook endpoint that takes the gateway's notifications
//! (Alertmanager's webhook payload, `version: "4"`, as `[[alerts.receivers]] webhook = …` sends
//! it), logs each alert as it arrives, and lists what it received, so a person running
//! `sekisho demo` can watch an alert fire without setting up Alertmanager or a chat channel.
//!
//! - `POST` (any path) with a webhook body → 200 `{"received": N}` (the alerts taken from it);
//!   a delivery seen before (the same `X-Sekisho-Notification-Id`, delivery being at least
//!   once) is answered 200 and not counted twice. A body that is not a webhook payload → 400.
//! - `GET /alerts` → `{"alerts": [{"received_at", "notification_id", "receiver", "status",
//!   "alertname", "severity", "target", "summary", "labels"}, …]}`, oldest first, the last
//!   [`KEPT`] only.
//!
//! It keeps everything in memory and forgets it on restart, as the demo's services do.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Alerts listed at most (the oldest are forgotten beyond).
pub const KEPT: usize = 1000;
/// The largest notification body read.
const MAX_BODY: usize = 1024 * 1024;

/// The demo's alert receiver, bound to its address, not yet serving.
#[derive(Debug)]
pub struct AlertInbox {
    listener: TcpListener,
    received: Arc<Mutex<Received>>,
}

#[derive(Debug, Default)]
struct Received {
    alerts: VecDeque<Value>,
    /// The notification ids seen, newest last (as many as the alerts kept).
    deliveries: VecDeque<String>,
}

fn lock(received: &Mutex<Received>) -> MutexGuard<'_, Received> {
    received
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AlertInbox {
    /// Binds `listen`.
    pub async fn bind(listen: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(listen).await?,
            received: Arc::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let received = self.received;
        crate::serve::serve_http(&self.listener, "alert receiver", shutdown, move |request| {
            let received = Arc::clone(&received);
            async move { answer(&received, request).await }
        })
        .await;
        Ok(())
    }
}

async fn answer(received: &Mutex<Received>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/alerts") => {
            let alerts: Vec<Value> = lock(received).alerts.iter().cloned().collect();
            reply(StatusCode::OK, &json!({ "alerts": alerts }))
        }
        (&Method::POST, _) => {
            let notification_id = request
                .headers()
                .get("x-sekisho-notification-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let Ok(body) = Limited::new(request.into_body(), MAX_BODY).collect().await else {
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &json!({"error": "body too large"}),
                );
            };
            let Ok(payload) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
                return reply(StatusCode::BAD_REQUEST, &json!({"error": "not JSON"}));
            };
            match take(received, notification_id, &payload) {
                Some(count) => reply(StatusCode::OK, &json!({ "received": count })),
                None => reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "not a webhook payload (no alerts[])"}),
                ),
            }
        }
        (_, "/alerts") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "GET or POST"}),
        ),
        _ => reply(StatusCode::NOT_FOUND, &json!({"error": "GET /alerts"})),
    }
}

/// Takes the alerts of one webhook payload; how many, or `None` when it is not one. A
/// notification id seen before takes nothing (a repeated delivery).
fn take(
    received: &Mutex<Received>,
    notification_id: Option<String>,
    payload: &Value,
) -> Option<usize> {
    let alerts = payload["alerts"].as_array()?;
    let mut received = lock(received);
    if let Some(id) = &notification_id {
        if received.deliveries.contains(id) {
            return Some(0);
        }
        received.deliveries.push_back(id.clone());
        if received.deliveries.len() > KEPT {
            received.deliveries.pop_front();
        }
    }
    let received_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let receiver = payload["receiver"].as_str().unwrap_or("");
    for alert in alerts {
        let labels = &alert["labels"];
        let text = |value: &Value| value.as_str().unwrap_or("").to_owned();
        let entry = json!({
            "received_at": received_at,
            "notification_id": notification_id,
            "receiver": receiver,
            "status": text(&alert["status"]),
            "alertname": text(&labels["alertname"]),
            "severity": text(&labels["severity"]),
            "target": text(&labels["target"]),
            "summary": text(&alert["annotations"]["summary"]),
            "labels": labels,
        });
        tracing::info!(
            alertname = %entry["alertname"].as_str().unwrap_or(""),
            status = %entry["status"].as_str().unwrap_or(""),
            severity = %entry["severity"].as_str().unwrap_or(""),
            alert_target = %entry["target"].as_str().unwrap_or(""),
            summary = %entry["summary"].as_str().unwrap_or(""),
            "alert received"
        );
        received.alerts.push_back(entry);
        if received.alerts.len() > KEPT {
            received.alerts.pop_front();
        }
    }
    Some(alerts.len())
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_payload_is_taken_once_per_notification() {
        let received = Mutex::new(Received::default());
        let payload = json!({
            "version": "4",
            "receiver": "demo",
            "status": "firing",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "CircuitOpen", "severity": "warning", "target": "payments"},
                "annotations": {"summary": "a circuit is open"},
            }],
        });
        assert_eq!(take(&received, Some("7".to_owned()), &payload), Some(1));
        assert_eq!(take(&received, Some("7".to_owned()), &payload), Some(0));
        assert_eq!(take(&received, None, &json!({"text": "slack"})), None);
        let received = lock(&received);
        assert_eq!(received.alerts.len(), 1);
        let alert = &received.alerts[0];
        assert_eq!(alert["alertname"], "CircuitOpen");
        assert_eq!(alert["target"], "payments");
        assert_eq!(alert["status"], "firing");
        assert_eq!(alert["notification_id"], "7");
    }
}
