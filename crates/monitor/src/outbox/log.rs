//! The delivery log: the outbox's rows as the admin API shows them, newest first.

use sekisho_db::sqlx::{self, any::AnyRow, Row};
use sekisho_db::DbError;

use super::{shown_url, DeliveryState, Outbox};

/// The columns the log reads, in [`logged`]'s order.
const LOG_COLUMNS: &str = "id, receiver, channel, url, group_key, status, fingerprints, state, \
     attempts, next_attempt_at, last_error, last_status, last_latency_ms, created_at, delivered_at";

/// One notification as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoggedNotification {
    /// Its id (the cursor of pagination).
    pub id: i64,
    /// The receiver's name.
    pub receiver: String,
    /// `webhook`, `alertmanager`, `slack`, `discord`, `email`, or `task` (a background task,
    /// `tasks.rs`).
    pub channel: String,
    /// Where it goes, as [`shown_url`] shows it (no credentials, query, or Slack/Discord secret);
    /// empty for a task.
    pub url: String,
    /// The alert group (a task's kind).
    pub group_key: String,
    /// `firing` or `resolved` (`task` for a task).
    pub status: String,
    /// The fingerprints of its alerts.
    pub fingerprints: Vec<String>,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// When the next attempt is due (Unix ms), while pending.
    pub next_attempt_at: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The receiver's last HTTP status.
    pub last_status: Option<i64>,
    /// How long the last attempt took (ms).
    pub last_latency_ms: Option<i64>,
    /// When it was written (Unix ms).
    pub created_at: i64,
    /// When it was delivered (Unix ms).
    pub delivered_at: Option<i64>,
}

impl Outbox {
    /// The delivery log, newest first: at most `limit` rows of `state` (all when `None`) with
    /// an id below `before` (the previous page's last id).
    pub async fn list(
        &self,
        state: Option<DeliveryState>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LoggedNotification>, DbError> {
        let statement = format!(
            "SELECT {LOG_COLUMNS} FROM notifications WHERE id < $1{} ORDER BY id DESC LIMIT $2",
            if state.is_some() {
                " AND state = $3"
            } else {
                ""
            }
        );
        let mut query = sqlx::query(&statement)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(self.database.pool()).await?;
        Ok(rows
            .iter()
            .map(logged)
            .collect::<Result<_, sqlx::Error>>()?)
    }
}

fn logged(row: &AnyRow) -> Result<LoggedNotification, sqlx::Error> {
    let state: String = row.try_get(7)?;
    let fingerprints: String = row.try_get(6)?;
    let next_attempt_at: i64 = row.try_get(9)?;
    let channel: String = row.try_get(2)?;
    let url: String = row.try_get(3)?;
    // A task's row has no URL.
    let shown = if url.is_empty() {
        String::new()
    } else {
        shown_url(&channel, &url)
    };
    // An error message may quote the URL it failed on.
    let last_error: Option<String> = row.try_get::<Option<String>, _>(10)?.map(|error| {
        if url.is_empty() {
            error
        } else {
            error.replace(&url, &shown)
        }
    });
    Ok(LoggedNotification {
        id: row.try_get(0)?,
        receiver: row.try_get(1)?,
        channel,
        url: shown,
        group_key: row.try_get(4)?,
        status: row.try_get(5)?,
        fingerprints: fingerprints
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect(),
        next_attempt_at: (state == "pending").then_some(next_attempt_at),
        state,
        attempts: row.try_get(8)?,
        last_error,
        last_status: row.try_get(11)?,
        last_latency_ms: row.try_get(12)?,
        created_at: row.try_get(13)?,
        delivered_at: row.try_get(14)?,
    })
}
