//! `GET /api/v1/notifications`: the outbox's delivery log — what was told to whom, when, in how
//! many attempts, and why the last one failed — newest first, with `?state=pending|delivered|dead`,
//! `?limit=N` (1–500, default 100) and `?cursor=ID` (the `next_cursor` of the previous page).
//! 503 `MONITOR_OFF` when alerting does not run (no receivers). And `POST
//! /api/v1/receivers/{name}/test`: a test notification (`SekishoTest`, info) written to the
//! outbox for each channel of the receiver; 202 with the rows' ids, 404 for an unknown name.

use http::{Method, StatusCode};
use sekisho_monitor::DeliveryState;
use serde_json::json;

use crate::{error, json_response, AdminResponse, AdminState};

/// A page holds this many rows unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// … and at most this many.
const MAX_LIMIT: usize = 500;

pub(crate) async fn notifications(
    state: &AdminState,
    method: &Method,
    query: Option<&str>,
) -> AdminResponse {
    if method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_REQUEST",
            &format!("{method} is not allowed here"),
        );
    }
    let Some(outbox) = state.outbox.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "MONITOR_OFF",
            "alerting is not running: it starts with at least one [[alerts.receivers]]",
        );
    };
    let mut wanted = None;
    let mut cursor = None;
    let mut limit = DEFAULT_LIMIT;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let bad = |what: &str| {
            error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("`{name}={value}`: {what}"),
            )
        };
        match name.as_ref() {
            "state" => match DeliveryState::parse(&value) {
                Some(s) => wanted = Some(s),
                None => return bad("state is pending, delivered or dead"),
            },
            "cursor" => match value.parse::<i64>() {
                Ok(id) => cursor = Some(id),
                Err(_) => return bad("the cursor is the `next_cursor` of a page"),
            },
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => return bad("limit is 1 to 500"),
            },
            _ => return bad("unknown parameter (state, cursor, limit)"),
        }
    }
    // One more than asked tells whether a next page exists.
    match outbox.list(wanted, cursor, limit + 1).await {
        Ok(mut rows) => {
            let more = rows.len() > limit;
            rows.truncate(limit);
            let next_cursor = more.then(|| rows.last().map(|r| r.id)).flatten();
            json_response(
                StatusCode::OK,
                &json!({ "notifications": rows, "next_cursor": next_cursor }),
            )
        }
        Err(failure) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            &format!("cannot read the delivery log: {failure}"),
        ),
    }
}

/// `POST /api/v1/receivers/{name}/test`.
pub(crate) async fn test_receiver(
    state: &AdminState,
    method: &Method,
    name: &str,
) -> AdminResponse {
    if method != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_REQUEST",
            &format!("{method} is not allowed here"),
        );
    }
    let (Some(monitor), Some(outbox)) = (state.alerts.get(), state.outbox.get()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "MONITOR_OFF",
            "alerting is not running: it starts with at least one [[alerts.receivers]]",
        );
    };
    let deliveries = monitor
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .test_deliveries(name, std::time::Instant::now());
    let Some(deliveries) = deliveries else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no receiver named `{name}`"),
        );
    };
    let mut ids = Vec::new();
    for delivery in &deliveries {
        match outbox.enqueue(delivery).await {
            Ok(id) => ids.push(id),
            Err(failure) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DATABASE_UNAVAILABLE",
                    &format!("cannot write the test notification: {failure}"),
                )
            }
        }
    }
    json_response(
        StatusCode::ACCEPTED,
        &json!({ "receiver": name, "notifications": ids }),
    )
}
