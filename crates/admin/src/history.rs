//! The alert history (`sekisho_monitor::History`, in the outbox's database):
//! `GET /api/v1/alerts/history` (episodes newest first, cursor pagination, filters),
//! `GET /api/v1/alerts/stats` (the last 24 hours: fired, resolved, mean time to resolve; active
//! now), and `POST /api/v1/alerts/{fingerprint}/ack` (the alert manager stops repeating it; the
//! history records when and by whom — `{"by": "name"}`, or `admin` without a body). 503
//! `MONITOR_OFF` without alerting.

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sekisho_monitor::{History, HistoryFilter};
use serde_json::json;

use crate::page::Page;
use crate::{error, ok, AdminResponse, AdminState};
/// The longest acknowledgement body read.
const MAX_ACK_BODY: usize = 4096;

fn monitor_off() -> AdminResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "MONITOR_OFF",
        "alerting is not running: it starts with at least one [[alerts.receivers]]",
    )
}

fn not_allowed(method: &Method) -> AdminResponse {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "BAD_REQUEST",
        &format!("{method} is not allowed here"),
    )
}

pub(crate) fn history(state: &AdminState) -> Option<History> {
    state
        .outbox
        .get()
        .map(|outbox| History::new(outbox.database().clone()))
}

fn unavailable(failure: &dyn std::fmt::Display) -> AdminResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        &format!("cannot read the alert history: {failure}"),
    )
}

/// `GET /api/v1/alerts/history?state=firing|resolved&fingerprint=…&alertname=…&since=MS&limit=N&cursor=ID`.
pub(crate) async fn list(
    state: &AdminState,
    method: &Method,
    query: Option<&str>,
) -> AdminResponse {
    if method != Method::GET {
        return not_allowed(method);
    }
    let Some(history) = history(state) else {
        return monitor_off();
    };
    let mut filter = HistoryFilter::default();
    let page = match Page::<i64>::parse(query, |name, value| {
        match name {
            "state" => match value {
                "firing" | "resolved" => filter.state = Some(value.to_owned()),
                _ => return Err("state is firing or resolved".to_owned()),
            },
            "fingerprint" => filter.fingerprint = Some(value.to_owned()),
            "alertname" => filter.alertname = Some(value.to_owned()),
            "since" => match value.parse::<i64>() {
                Ok(ms) => filter.since = Some(ms),
                Err(_) => return Err("since is Unix milliseconds".to_owned()),
            },
            _ => {
                return Err(
                    "unknown parameter (state, fingerprint, alertname, since, cursor, limit)"
                        .to_owned(),
                )
            }
        }
        Ok(())
    }) {
        Ok(page) => page,
        Err(refused) => return *refused,
    };
    match history.list(&filter, page.cursor, page.fetch()).await {
        Ok(rows) => {
            let (rows, next_cursor) = page.split(rows, |r| r.id);
            ok(
                StatusCode::OK,
                json!({ "alerts": rows, "next_cursor": next_cursor }),
            )
        }
        Err(failure) => unavailable(&failure),
    }
}

/// `GET /api/v1/alerts/stats`.
pub(crate) async fn stats(state: &AdminState, method: &Method) -> AdminResponse {
    if method != Method::GET {
        return not_allowed(method);
    }
    let Some(history) = history(state) else {
        return monitor_off();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    match history.stats(now).await {
        Ok(stats) => ok(StatusCode::OK, json!(stats)),
        Err(failure) => unavailable(&failure),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AckBody {
    #[serde(default)]
    by: Option<String>,
}

/// `POST /api/v1/alerts/{fingerprint}/ack`, with an optional `{"by": "name"}`.
pub(crate) async fn acknowledge(
    state: &AdminState,
    fingerprint: &str,
    request: Request<Incoming>,
) -> AdminResponse {
    let Some(monitor) = state.alerts.get() else {
        return monitor_off();
    };
    let body = match http_body_util::Limited::new(request.into_body(), MAX_ACK_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the body could not be read (or is over 4 KiB)",
            )
        }
    };
    let body: AckBody = if body.iter().all(u8::is_ascii_whitespace) {
        AckBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(why) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    &format!("the body is `{{\"by\": \"name\"}}` or nothing: {why}"),
                )
            }
        }
    };
    let by = body
        .by
        .map(|by| by.trim().chars().take(200).collect::<String>())
        .filter(|by| !by.is_empty())
        .unwrap_or_else(|| "admin".to_owned());
    let (known, at) = {
        let mut guard = monitor.lock().unwrap_or_else(|p| p.into_inner());
        let known = guard.manager().acknowledge(fingerprint);
        (known, guard.unix_millis(std::time::Instant::now()))
    };
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no alert with fingerprint `{fingerprint}`"),
        );
    }
    // The acknowledgement is in force either way; the history may lag when the database fails.
    let recorded = match history(state) {
        Some(history) => match history.acknowledge(fingerprint, &by, at).await {
            Ok(found) => found,
            Err(failure) => {
                tracing::warn!(%failure, fingerprint, "cannot record an acknowledgement in the alert history");
                false
            }
        },
        None => false,
    };
    ok(
        StatusCode::OK,
        json!({ "fingerprint": fingerprint, "acknowledged": true, "by": by, "recorded": recorded }),
    )
}
