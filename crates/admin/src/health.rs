//! The checks of `/health/detailed` that need I/O: the database (one `SELECT 1`, bounded) and
//! the disk holding `store.data_dir`. Each is a JSON object with a `status` of `healthy`,
//! `degraded` or `unhealthy`, and what it saw; none shows a secret (the database's URL is not
//! shown at all, only its kind).

use std::time::Duration;

use serde_json::{json, Value};

use crate::AdminState;

/// How long the database has to answer a health check's `SELECT 1`: a load balancer polling
/// `/health/detailed` must get an answer well within its own timeout.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(1);

/// Used share of the data directory's file system from which the disk is `degraded` …
const DISK_DEGRADED: f64 = 0.90;
/// … and `unhealthy` (writes of sessions, audit rows and notifications may soon fail).
const DISK_UNHEALTHY: f64 = 0.95;

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
                "rtt_ms": (rtt.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
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
