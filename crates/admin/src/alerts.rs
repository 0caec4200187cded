//! The admin API of alerting: active alerts (`/api/v1/alerts`, by fingerprint) and silences
//! (`/api/v1/silences`, by id), a page at a time, answered by the monitor the binary runs (`sekisho_monitor::Monitor`);
//! 503 `MONITOR_OFF` without one. Acknowledgements, the history and its statistics are in
//! `history.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use sekisho_monitor::{Matcher, Monitor, Silence};
use serde_json::json;

use crate::page::Page;
use crate::users::body_json;
use crate::{error, ok, AdminResponse, AdminState};

/// The monitor shared with the binary's monitoring task.
pub type SharedMonitor = Arc<Mutex<Monitor>>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MatcherBody {
    name: String,
    value: String,
    #[serde(default = "yes")]
    is_equal: bool,
}

fn yes() -> bool {
    true
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceBody {
    matchers: Vec<MatcherBody>,
    /// How long, in seconds.
    duration_seconds: u64,
    #[serde(default)]
    comment: String,
}

fn monitor(state: &AdminState) -> Result<&SharedMonitor, Box<AdminResponse>> {
    state.alerts.get().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "MONITOR_OFF",
            "alerting is not running: it starts with at least one [[alerts.receivers]]",
        ))
    })
}

/// 503 `DATABASE_UNAVAILABLE`: a silence's change could not be kept, so none was made.
fn not_stored(failure: &dyn std::fmt::Display) -> AdminResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        &format!("the silence could not be stored, nothing changed: {failure}"),
    )
}

fn lock(monitor: &SharedMonitor) -> std::sync::MutexGuard<'_, Monitor> {
    monitor.lock().unwrap_or_else(|p| p.into_inner())
}

/// `GET /api/v1/alerts`: the active alerts, a page at a time by fingerprint.
pub(crate) fn alerts(
    state: &AdminState,
    method: &Method,
    rest: &str,
    query: Option<&str>,
) -> AdminResponse {
    let shared = match monitor(state) {
        Ok(m) => m,
        Err(answer) => return *answer,
    };
    let now = Instant::now();
    match (method, rest) {
        (&Method::GET, "") => {
            let page = match Page::<String>::parse_plain(query) {
                Ok(page) => page,
                Err(refused) => return *refused,
            };
            let active = lock(shared).manager().active_alerts(now);
            let (active, next_cursor) = page.cut(active, |a| a.fingerprint.clone());
            let alerts: Vec<_> = active
                .into_iter()
                .map(|a| {
                    json!({
                        "fingerprint": a.fingerprint,
                        "labels": a.labels,
                        "annotations": a.annotations,
                        "severity": a.severity.as_str(),
                        "muted": a.muted,
                        "acknowledged": a.acknowledged,
                        "firing_for_seconds": a.firing_for.as_secs(),
                    })
                })
                .collect();
            ok(
                StatusCode::OK,
                json!({ "alerts": alerts, "next_cursor": next_cursor }),
            )
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_REQUEST",
            &format!("{method} is not allowed here"),
        ),
    }
}

/// `GET/POST /api/v1/silences`, `DELETE /api/v1/silences/{id}`.
pub(crate) async fn silences(
    state: &AdminState,
    rest: &str,
    request: Request<Incoming>,
) -> AdminResponse {
    let shared = match monitor(state) {
        Ok(m) => m.clone(),
        Err(answer) => return *answer,
    };
    let now = Instant::now();
    let method = request.method().clone();
    match (&method, rest) {
        (&Method::GET, "") => {
            let page = match Page::<u64>::parse_plain(request.uri().query()) {
                Ok(page) => page,
                Err(refused) => return *refused,
            };
            let in_force = lock(&shared).manager().silences(now);
            let (in_force, next_cursor) = page.cut(in_force, |(id, _)| *id);
            let silences: Vec<_> = in_force
                .into_iter()
                .map(|(id, s)| {
                    let matchers: Vec<_> = s
                        .matchers
                        .iter()
                        .map(|m| match m {
                            Matcher::Equal(n, v) => {
                                json!({"name": n, "value": v, "is_equal": true})
                            }
                            Matcher::NotEqual(n, v) => {
                                json!({"name": n, "value": v, "is_equal": false})
                            }
                        })
                        .collect();
                    json!({
                        "id": id,
                        "matchers": matchers,
                        "ends_in_seconds": s.until.saturating_duration_since(now).as_secs(),
                        "comment": s.comment,
                    })
                })
                .collect();
            ok(
                StatusCode::OK,
                json!({ "silences": silences, "next_cursor": next_cursor }),
            )
        }
        (&Method::POST, "") => {
            let body: SilenceBody = match body_json(request).await {
                Ok(body) => body,
                Err(answer) => return *answer,
            };
            if body.matchers.is_empty() || body.duration_seconds == 0 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "a silence needs at least one matcher and a duration_seconds above 0",
                );
            }
            let matchers = body
                .matchers
                .into_iter()
                .map(|m| {
                    if m.is_equal {
                        Matcher::Equal(m.name, m.value)
                    } else {
                        Matcher::NotEqual(m.name, m.value)
                    }
                })
                .collect();
            let seconds = body.duration_seconds.min(365 * 86_400);
            let silence = Silence {
                matchers,
                until: now + Duration::from_secs(seconds),
                comment: body.comment,
            };
            // Kept in the database first (its id is the row's), so that a restart does not end
            // it; when that fails nothing changes and the operator is told.
            let id = match crate::history::history(state) {
                Some(store) => {
                    let at = sekisho_db::now_millis();
                    let ends_at = at.saturating_add(i64::try_from(seconds * 1000).unwrap_or(0));
                    match store
                        .add_silence(&silence.matchers, ends_at, &silence.comment, at)
                        .await
                    {
                        Ok(id) => {
                            let id = u64::try_from(id).unwrap_or_default();
                            lock(&shared).manager().silence_with_id(id, silence);
                            id
                        }
                        Err(failure) => return not_stored(&failure),
                    }
                }
                None => lock(&shared).manager().silence(silence),
            };
            ok(StatusCode::CREATED, json!({ "id": id }))
        }
        (&Method::DELETE, id) => {
            let Ok(id) = id.trim_start_matches('/').parse::<u64>() else {
                return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such silence");
            };
            if !lock(&shared)
                .manager()
                .silences(now)
                .iter()
                .any(|(known, _)| *known == id)
            {
                return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such silence");
            }
            if let Some(store) = crate::history::history(state) {
                let at = sekisho_db::now_millis();
                if let Err(failure) = store
                    .expire_silence(i64::try_from(id).unwrap_or(i64::MAX), at)
                    .await
                {
                    return not_stored(&failure);
                }
            }
            lock(&shared).manager().expire_silence(id);
            ok(StatusCode::OK, json!({ "id": id, "expired": true }))
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_REQUEST",
            &format!("{method} is not allowed here"),
        ),
    }
}
