//! Probes that need I/O, each giving one signal's value or nothing when it cannot be read:
//! the database's round trip (`database_rtt`, seconds), failed logins over the last minute
//! (`login_failures_per_minute`, from the audit table `sekisho-auth` writes — read only, so
//! the auth crate needs no counter of its own), and the used share of the file system holding
//! the data directory (`disk`).

use std::path::Path;
use std::time::Duration;

use sekisho_db::{now_millis, Database};

/// The audit event of a failed login (`sekisho-auth`, `login.rs`).
const LOGIN_FAILED: &str = "authn_login_fail";

/// One `SELECT 1`, in seconds; nothing when the database does not answer within `timeout`.
pub async fn database_rtt(database: &Database, timeout: Duration) -> Option<f64> {
    match tokio::time::timeout(timeout, database.ping()).await {
        Ok(Ok(rtt)) => Some(rtt.as_secs_f64()),
        _ => None,
    }
}

/// Failed logins written to the audit table in the last minute; nothing when the table cannot
/// be read (no `[auth]`: the table is there but empty, which reads 0).
pub async fn login_failures_per_minute(database: &Database) -> Option<f64> {
    let since = now_millis().saturating_sub(60_000);
    let count: i64 = sekisho_db::sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE event = $1 AND at >= $2",
    )
    .bind(LOGIN_FAILED)
    .bind(since)
    .fetch_one(database.pool())
    .await
    .ok()?;
    Some(count as f64)
}

/// The used share (0–1) of the file system holding `path`, as `df` counts it (blocks not
/// available to unprivileged users count as used).
pub fn disk_used(path: &Path) -> Option<f64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let total = stat.f_blocks as f64;
    (total > 0.0).then(|| 1.0 - stat.f_bavail as f64 / total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_of_a_directory_that_exists_is_a_share() {
        let used = disk_used(&std::env::temp_dir()).unwrap();
        assert!((0.0..=1.0).contains(&used), "{used}");
        assert!(disk_used(Path::new("/no/such/directory")).is_none());
    }
}
