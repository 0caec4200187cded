//! `GET /api/v1/notifications`: the outbox's delivery log — what was told to whom, when, in how
//! many attempts, and why the last one failed — newest first, with `?state=pending|delivered|dead`,
//! `?limit=N` (1–500, default 100) and `?cursor=ID` (the `next_cursor` of the previous page).
//! 503 `MONITOR_OFF` when alerting does not run (no receivers). And `POST
//! /api/v1/receivers/{name}/test`: a test notification (`SekishoTest`, info) written to the
//! outbox for each channel of the receiver; 202 with the rows' ids, 404 for an unknown name.

use http::{Method, StatusCode};
use sekisho_monitor::DeliveryState;
use serde_json::json;

use crate::page::Page;
use crate::{error, ok, AdminResponse, AdminState};

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
            "the notification outbox is not running: it starts with at least one [[alerts.receivers]] or with [auth] (its background tasks)",
        );
    };
    let mut wanted = None;
    let page = match Page::<i64>::parse(query, |name, value| match name {
        "state" => DeliveryState::parse(value)
            .map(|s| wanted = Some(s))
            .ok_or_else(|| "state is pending, delivered or dead".to_owned()),
        _ => Err("unknown parameter (state, cursor, limit)".to_owned()),
    }) {
        Ok(page) => page,
        Err(refused) => return *refused,
    };
    match outbox.list(wanted, page.cursor, page.fetch()).await {
        Ok(rows) => {
            let (rows, next_cursor) = page.split(rows, |r| r.id);
            ok(
                StatusCode::OK,
                json!({ "notifications": rows, "next_cursor": next_cursor }),
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
    ok(
        StatusCode::ACCEPTED,
        json!({ "receiver": name, "notifications": ids }),
    )
}
