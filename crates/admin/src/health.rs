//! The probes: `/ready`, `/health/detailed` (with the checks that need I/O: the database —
//! one `SELECT 1`, bounded —, Redis's round trip and the disk holding `store.data_dir`) and
//! `GET /api/v1/status`. Each check is a JSON object with a `status` of `healthy`, `degraded`
//! or `unhealthy`, and what it saw; none shows a secret (the database's URL is not shown at
//! all, only its kind).

use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{json, Value};

use crate::clock::unix_ms;
use crate::{json_response, ok, AdminResponse, AdminState};

/// How long the database has to answer a health check's `SELECT 1`: a load balancer polling
/// `/health/detailed` must get an answer well within its own timeout.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(1);

/// Used share of the data directory's file system from which the disk is `degraded` …
const DISK_DEGRADED: f64 = 0.90;
/// … and `unhealthy` (writes of sessions, audit rows and notifications may soon fail).
const DISK_UNHEALTHY: f64 = 0.95;

/// A round trip in milliseconds, to the microsecond.
fn millis(rtt: Duration) -> f64 {
    (rtt.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The database the gateway uses (`[auth]`'s, or the alerting outbox's); nothing without one.
pub(crate) async fn database(state: &AdminState) -> Option<Value> {
    let database = match state.gateway.auth() {
        Some(auth) => auth.directory().database().clone(),
        None => state.outbox.get()?.database().clone(),
    };
    let kind = format!("{:?}", database.dialect()).to_lowercase();
    Some(
        match tokio::time::timeout(DATABASE_TIMEOUT, database.ping()).await {
            Ok(Ok(rtt)) => json!({
                "status": "healthy",
                "kind": kind,
                "rtt_ms": millis(rtt),
            }),
            Ok(Err(failure)) => json!({
                "status": "unhealthy",
                "kind": kind,
                "error": failure.to_string(),
            }),
            Err(_) => json!({
                "status": "unhealthy",
                "kind": kind,
                "error": format!("no answer within {} ms", DATABASE_TIMEOUT.as_millis()),
            }),
        },
    )
}

/// The file system holding `store.data_dir` (taken relative to the config file's directory;
/// its nearest existing parent until it is made).
pub(crate) fn disk(state: &AdminState) -> Option<Value> {
    let config = state.gateway.config();
    let base = state
        .gateway
        .config_path()
        .and_then(std::path::Path::parent);
    let dir = sekisho_db::data_dir(&config.store, base);
    let (dir, space) = dir
        .ancestors()
        .find_map(|dir| sekisho_monitor::probes::disk_space(dir).map(|space| (dir, space)))?;
    let status = if space.used >= DISK_UNHEALTHY {
        "unhealthy"
    } else if space.used >= DISK_DEGRADED {
        "degraded"
    } else {
        "healthy"
    };
    Some(json!({
        "status": status,
        "path": dir.display().to_string(),
        "used": (space.used * 1000.0).round() / 1000.0,
        "free_bytes": space.free_bytes,
    }))
}

pub(crate) fn ready(state: &AdminState) -> AdminResponse {
    let status = state.gateway.status();
    if status.ready {
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    } else {
        let why = if status.draining {
            "draining"
        } else if status.store_connecting {
            "connecting to redis"
        } else {
            "starting"
        };
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": why}),
        )
    }
}

pub(crate) async fn detailed(state: &AdminState) -> AdminResponse {
    let status = state.gateway.status();
    let listener = if status.ready {
        json!({"status": "healthy"})
    } else {
        json!({"status": "unhealthy", "reason": if status.draining { "draining" } else { "not serving" }})
    };
    let loaded_at = status
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let config = match &status.last_reload.error {
        None => {
            json!({"status": "healthy", "generation": status.generation, "loaded_at": loaded_at})
        }
        Some(error) => json!({
            "status": "degraded",
            "generation": status.generation,
            "loaded_at": loaded_at,
            "reason": "the last reload was refused; the previous config is in force",
            "error": error,
        }),
    };
    // An upstream with targets out is degraded, one with none usable unhealthy; either makes
    // the whole "degraded", never "unhealthy": the gateway itself still serves, and a load
    // balancer in front should not take it out because a service behind it is down.
    let mut upstreams_degraded = false;
    let upstreams: serde_json::Map<String, serde_json::Value> = state
        .gateway
        .upstreams()
        .into_iter()
        .map(|u| {
            let usable = u.targets.iter().filter(|t| t.health == "healthy").count();
            let status = if usable == u.targets.len() {
                "healthy"
            } else if usable == 0 {
                "unhealthy"
            } else {
                "degraded"
            };
            upstreams_degraded |= status != "healthy";
            (
                u.name.clone(),
                json!({
                    "status": status,
                    "targets": u.targets.len(),
                    "usable": usable,
                    "eligible": u.targets.iter().filter(|t| t.eligible).count(),
                    "panic": u.panic,
                }),
            )
        })
        .collect();
    // Redis, when a rate limit uses it: down is "degraded" (limits follow on_store_error).
    // With its round trip now (one PING within 100 ms; null when it does not answer).
    let redis = match state.gateway.store_status() {
        Some(store) => {
            let rtt_ms = state.gateway.redis_rtt().await.map(millis);
            Some(json!({
                "status": if store.healthy { "healthy" } else { "degraded" },
                "url": store.url,
                "errors": store.errors,
                "last_error": store.last_error,
                "instances": store.instances,
                "rtt_ms": rtt_ms,
            }))
        }
        None => None,
    };
    let redis_degraded = redis
        .as_ref()
        .is_some_and(|redis| redis["status"] != "healthy");
    let database = database(state).await;
    let disk = disk(state);
    // Like Redis, neither takes the gateway out: routes that need neither still serve.
    let store_degraded = [&database, &disk]
        .into_iter()
        .flatten()
        .any(|check| check["status"] != "healthy");
    let overall = if !status.ready {
        "unhealthy"
    } else if status.last_reload.error.is_some()
        || upstreams_degraded
        || redis_degraded
        || store_degraded
    {
        "degraded"
    } else {
        "healthy"
    };
    let code = if overall == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut checks = json!({
        "listener": listener,
        "config": config,
        "upstreams": upstreams,
    });
    if let Some(redis) = redis {
        checks["redis"] = redis;
    }
    if let Some(database) = database {
        checks["database"] = database;
    }
    if let Some(disk) = disk {
        checks["disk"] = disk;
    }
    json_response(code, &json!({"status": overall, "checks": checks}))
}

/// `GET /api/v1/status`: the gateway's overall colour as the dashboard shows it (from the latest
/// snapshot), readiness, the config in force and its last reload, and the version.
pub(crate) fn api_status(state: &AdminState) -> AdminResponse {
    let status = state.gateway.status();
    let snapshot = state.dashboard.latest_value();
    ok(
        StatusCode::OK,
        json!({
            "overall": snapshot.as_ref().map_or(json!("unknown"), |s| s["status"].clone()),
            "ready": status.ready,
            "draining": status.draining,
            "version": env!("CARGO_PKG_VERSION"),
            "generation": status.generation,
            "loaded_at_unix_ms": unix_ms(status.loaded_at),
            "last_reload": {
                "at_unix_ms": status.last_reload.at.map(unix_ms),
                "error": status.last_reload.error,
            },
            "recent_reloads": snapshot.as_ref().map_or(json!([]), |s| s["reloads"]["recent"].clone()),
        }),
    )
}
