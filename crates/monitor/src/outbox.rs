//! The notification outbox: every notification is a row of the database (`notifications`,
//! migration 2 of `sekisho-db`) before anything is sent, and stays one — pending, delivered or
//! dead — as the delivery log.
//!
//! - **Claiming**: a worker takes due rows by moving their `next_attempt_at` a lease ahead and
//!   counting the attempt, in one statement; on PostgreSQL `FOR UPDATE SKIP LOCKED` lets several
//!   gateways share the rows without two taking the same one; on SQLite the single connection
//!   serialises claimers. A worker that dies mid-delivery leaves its row pending: when the lease
//!   ends, another (or the restarted one) takes it again — delivery is at least once, and each
//!   body carries the alerts' fingerprints and each request the row's id
//!   (`X-Sekisho-Notification-Id`) so a receiver can drop the rare duplicate.
//!   On SQLite, the one gateway of the file takes every pending row as due when it starts.
//! - **Order**: a row is claimed only when no earlier row of its lane (receiver, channel, group)
//!   is still pending, so a group's `resolved` never overtakes its `firing`, and a receiver that
//!   is down delays only its own lanes.
//! - **Retries**: a failed attempt waits `backoff_initial`, doubling up to `backoff_max`, each
//!   wait drawn between half and all of it (jitter, so that gateways do not retry in step); a
//!   row older than `max_age`, or past `max_attempts`, is dead.
//! - **Retention**: delivered and dead rows are removed `retention` after they finished.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sekisho_db::sqlx::{self, any::AnyRow, Row};
use sekisho_db::{now_millis, Database, DbError, Dialect};
use tokio::sync::Notify;

use crate::run::Delivery;

/// How long a claimed row is left to its worker before another may take it: well past a
/// call's own time limit.
pub const LEASE: Duration = Duration::from_secs(30);

/// How the outbox retries and gives up (the config's `[alerts.outbox]`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxSettings {
    /// The wait after the first failure.
    pub backoff_initial: Duration,
    /// The longest wait.
    pub backoff_max: Duration,
    /// Undelivered this long after it was written: dead.
    pub max_age: Duration,
    /// Dead after this many attempts, if set.
    pub max_attempts: Option<u32>,
    /// Finished rows are kept this long.
    pub retention: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self::from_config(&sekisho_config::Outbox::default())
    }
}

impl OutboxSettings {
    /// The config's `[alerts.outbox]`.
    pub fn from_config(outbox: &sekisho_config::Outbox) -> Self {
        Self {
            backoff_initial: outbox.backoff_initial.0,
            backoff_max: outbox.backoff_max.0.max(outbox.backoff_initial.0),
            max_age: outbox.max_age.0,
            max_attempts: outbox.max_attempts.map(|n| n.get()),
            retention: outbox.retention.0,
            concurrency: usize::try_from(outbox.concurrency.get()).unwrap_or(16),
        }
    }

    /// The wait before attempt `attempts + 1`, given `attempts` failed ones, with `unit` in
    /// [0, 1) drawn for the jitter: between half and all of the doubled, capped delay.
    pub fn backoff(&self, attempts: u32, unit: f64) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        let full = self
            .backoff_initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.backoff_max);
        full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// Where a notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt (or in one).
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Given up: too old or too many attempts.
    Dead,
}

impl DeliveryState {
    /// Its name in the database and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

/// A row claimed for an attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Its id.
    pub id: i64,
    /// The receiver's name.
    pub receiver: String,
    /// The channel's name (`webhook`, …, `email`).
    pub channel: String,
    /// Where it is POSTed.
    pub url: String,
    /// The body, JSON.
    pub payload: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// When it was written (Unix ms).
    pub created_at: i64,
}

/// One notification as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoggedNotification {
    /// Its id (the cursor of pagination).
    pub id: i64,
    /// The receiver's name.
    pub receiver: String,
    /// `webhook`, `alertmanager`, `slack`, `discord` or `email`.
    pub channel: String,
    /// Where it goes, as [`shown_url`] shows it (no credentials, query, or Slack/Discord secret).
    pub url: String,
    /// The alert group.
    pub group_key: String,
    /// `firing` or `resolved`.
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

/// How deep the queue is: pending rows and the age of the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Rows pending.
    pub pending: i64,
    /// When the oldest pending row was written (Unix ms).
    pub oldest_created_at: Option<i64>,
}

/// Delivery attempts of one receiver's channel by this gateway since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Delivered.
    pub delivered: u64,
    /// Failed (to be retried, or dead).
    pub failed: u64,
    /// Given up.
    pub dead: u64,
}

/// What an attempt came to, for the [`Tally`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    Delivered,
    Failed,
    Dead,
}

/// The outbox on a database (a cheap clone).
#[derive(Debug, Clone)]
pub struct Outbox {
    database: Database,
    settings: OutboxSettings,
    /// Rung when a row is written, so the local worker need not wait for its poll.
    wake: Arc<Notify>,
    /// Attempts by (receiver, channel), for the metrics.
    tallies: Arc<std::sync::Mutex<BTreeMap<(String, String), Tally>>>,
}

/// The columns the log reads, in [`logged`]'s order.
const LOG_COLUMNS: &str = "id, receiver, channel, url, group_key, status, fingerprints, state, \
     attempts, next_attempt_at, last_error, last_status, last_latency_ms, created_at, delivered_at";

impl Outbox {
    /// The outbox on `database`, migrated.
    pub async fn open(database: Database, settings: OutboxSettings) -> Result<Self, DbError> {
        database.migrate().await?;
        if database.dialect() == Dialect::Sqlite {
            // An embedded database has one gateway: a row claimed now was claimed by a process
            // that is gone (killed mid-attempt), so its lease need not run out.
            sqlx::query(
                "UPDATE notifications SET next_attempt_at = $1 \
                 WHERE state = 'pending' AND next_attempt_at > $1",
            )
            .bind(now_millis())
            .execute(database.pool())
            .await?;
        }
        Ok(Self {
            database,
            settings,
            wake: Arc::new(Notify::new()),
            tallies: Arc::default(),
        })
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The settings.
    pub fn settings(&self) -> &OutboxSettings {
        &self.settings
    }

    /// Writes `delivery` as a pending row, due now; its id.
    pub async fn enqueue(&self, delivery: &Delivery) -> Result<i64, DbError> {
        let now = now_millis();
        let lane = format!(
            "{}\u{1f}{}\u{1f}{}",
            delivery.receiver,
            delivery.channel.as_str(),
            delivery.group_key
        );
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO notifications (receiver, channel, url, lane, group_key, status, \
             fingerprints, payload, state, attempts, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $9) RETURNING id",
        )
        .bind(&delivery.receiver)
        .bind(delivery.channel.as_str())
        .bind(&delivery.url)
        .bind(&lane)
        .bind(&delivery.group_key)
        .bind(&delivery.status)
        .bind(delivery.fingerprints.join(","))
        .bind(delivery.body.to_string())
        .bind(now)
        .fetch_one(self.database.pool())
        .await?;
        self.wake.notify_one();
        Ok(id)
    }

    /// Claims up to `limit` due rows for an attempt each (see the module's doc).
    pub async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, DbError> {
        let now = now_millis();
        let lease_end = now.saturating_add(i64::try_from(LEASE.as_millis()).unwrap_or(30_000));
        // On SQLite, `+` keeps the due time out of the index choice, so that the pending rows
        // are walked in id order (`notifications_pending_order`) up to the limit rather than all
        // gathered by due time and sorted (migration 7).
        let (lock, due) = match self.database.dialect() {
            Dialect::Postgres => ("FOR UPDATE OF n SKIP LOCKED", "n.next_attempt_at"),
            Dialect::Sqlite => ("", "+n.next_attempt_at"),
        };
        let statement = format!(
            "UPDATE notifications SET next_attempt_at = $1, attempts = attempts + 1 \
             WHERE id IN (SELECT n.id FROM notifications n \
                 WHERE n.state = 'pending' AND {due} <= $2 \
                 AND NOT EXISTS (SELECT 1 FROM notifications e \
                     WHERE e.lane = n.lane AND e.state = 'pending' AND e.id < n.id) \
                 ORDER BY n.id LIMIT $3 {lock}) \
             RETURNING id, receiver, url, payload, attempts, created_at, channel"
        );
        let rows = sqlx::query(&statement)
            .bind(lease_end)
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.database.pool())
            .await?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(Claimed {
                    id: row.try_get(0)?,
                    receiver: row.try_get(1)?,
                    url: row.try_get(2)?,
                    payload: row.try_get(3)?,
                    attempts: u32::try_from(row.try_get::<i64, _>(4)?).unwrap_or(u32::MAX),
                    created_at: row.try_get(5)?,
                    channel: row.try_get(6)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        claimed.sort_by_key(|c| c.id);
        Ok(claimed)
    }

    /// Records that `claimed` was delivered.
    pub async fn delivered(
        &self,
        claimed: &Claimed,
        status: u16,
        latency: Duration,
    ) -> Result<(), DbError> {
        let now = now_millis();
        sqlx::query(
            "UPDATE notifications SET state = 'delivered', delivered_at = $1, finished_at = $1, \
             last_status = $2, last_latency_ms = $3 WHERE id = $4",
        )
        .bind(now)
        .bind(i64::from(status))
        .bind(millis(latency))
        .bind(claimed.id)
        .execute(self.database.pool())
        .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Records that an attempt at `claimed` failed with `error` (`status` when the receiver
    /// answered): the next attempt after the backoff, or dead when too old or tried too often
    /// (`permanent`: at once). Returns whether it is dead.
    pub async fn failed(
        &self,
        claimed: &Claimed,
        error: &str,
        status: Option<u16>,
        latency: Duration,
        permanent: bool,
    ) -> Result<bool, DbError> {
        let now = now_millis();
        let too_old = now.saturating_sub(claimed.created_at) >= millis(self.settings.max_age);
        let too_many = self
            .settings
            .max_attempts
            .is_some_and(|max| claimed.attempts >= max);
        let dead = permanent || too_old || too_many;
        let next = now.saturating_add(millis(
            self.settings.backoff(claimed.attempts, fastrand::f64()),
        ));
        sqlx::query(
            "UPDATE notifications SET state = $1, next_attempt_at = $2, finished_at = $3, \
             last_error = $4, last_status = $5, last_latency_ms = $6 WHERE id = $7",
        )
        .bind(if dead { "dead" } else { "pending" })
        .bind(next)
        .bind(dead.then_some(now))
        .bind(error)
        .bind(status.map(i64::from))
        .bind(millis(latency))
        .bind(claimed.id)
        .execute(self.database.pool())
        .await?;
        if dead {
            self.wake.notify_one();
        }
        Ok(dead)
    }

    /// When the earliest pending row is due (Unix ms), if any.
    pub async fn next_due(&self) -> Result<Option<i64>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM notifications WHERE state = 'pending'",
        )
        .fetch_one(self.database.pool())
        .await?)
    }

    /// Pending rows and the oldest one's age.
    pub async fn depth(&self) -> Result<QueueDepth, DbError> {
        let row = sqlx::query(
            "SELECT COUNT(*), MIN(created_at) FROM notifications WHERE state = 'pending'",
        )
        .fetch_one(self.database.pool())
        .await?;
        Ok(QueueDepth {
            pending: row.try_get(0)?,
            oldest_created_at: row.try_get(1)?,
        })
    }

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

    /// Removes finished rows older than the retention; how many.
    pub async fn purge(&self) -> Result<u64, DbError> {
        let cutoff = now_millis().saturating_sub(millis(self.settings.retention));
        let done =
            sqlx::query("DELETE FROM notifications WHERE state <> 'pending' AND finished_at < $1")
                .bind(cutoff)
                .execute(self.database.pool())
                .await?;
        Ok(done.rows_affected())
    }

    /// Delivery attempts by (receiver, channel) since this outbox was opened.
    pub fn tallies(&self) -> BTreeMap<(String, String), Tally> {
        self.tallies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts an attempt of `claimed`.
    pub(crate) fn count(&self, claimed: &Claimed, outcome: Counted) {
        let mut tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        let tally = tallies
            .entry((claimed.receiver.clone(), claimed.channel.clone()))
            .or_default();
        match outcome {
            Counted::Delivered => tally.delivered += 1,
            Counted::Failed => tally.failed += 1,
            Counted::Dead => {
                tally.failed += 1;
                tally.dead += 1;
            }
        }
    }

    /// Waits until a row is written or finished here, or `timeout` passes.
    pub(crate) async fn woken(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }
}

/// What the delivery log shows of a receiver's URL: scheme, host, port and (except for Slack and
/// Discord, whose path is the webhook's secret) the path — never credentials or a query string,
/// which may hold tokens.
pub fn shown_url(channel: &str, url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return "(not shown)".to_owned();
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return "(not shown)".to_owned();
    };
    let host = match authority.port_u16() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    // `Uri::path` says "/" for a URL without a path (`smtp://host:25`): show what was written.
    let has_path = url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    let path = match channel {
        "slack" | "discord" => "/…",
        _ if has_path => uri.path(),
        _ => "",
    };
    format!("{scheme}://{host}{path}")
}

fn logged(row: &AnyRow) -> Result<LoggedNotification, sqlx::Error> {
    let state: String = row.try_get(7)?;
    let fingerprints: String = row.try_get(6)?;
    let next_attempt_at: i64 = row.try_get(9)?;
    let channel: String = row.try_get(2)?;
    let url: String = row.try_get(3)?;
    let shown = shown_url(&channel, &url);
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

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_shows_no_credentials_query_or_chat_webhook_secret() {
        assert_eq!(
            shown_url(
                "webhook",
                "https://ops:s3cret@alerts.example:8443/hook?token=abc"
            ),
            "https://alerts.example:8443/hook"
        );
        assert_eq!(
            shown_url(
                "slack",
                "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
            ),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            shown_url("discord", "https://discord.com/api/webhooks/1/SECRET"),
            "https://discord.com/…"
        );
        assert_eq!(
            shown_url("alertmanager", "http://127.0.0.1:9093/api/v2/alerts"),
            "http://127.0.0.1:9093/api/v2/alerts"
        );
        assert_eq!(
            shown_url("email", "smtp://127.0.0.1:2525"),
            "smtp://127.0.0.1:2525"
        );
        assert_eq!(shown_url("webhook", "not a url"), "(not shown)");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_between_half_and_all() {
        let settings = OutboxSettings {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..OutboxSettings::default()
        };
        assert_eq!(settings.backoff(1, 0.999_999).as_millis(), 99);
        assert_eq!(settings.backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(settings.backoff(2, 0.0), Duration::from_millis(100));
        assert_eq!(settings.backoff(3, 0.0), Duration::from_millis(200));
        assert_eq!(settings.backoff(5, 0.0), Duration::from_millis(500));
        assert_eq!(settings.backoff(40, 0.0), Duration::from_millis(500));
        assert_eq!(settings.backoff(u32::MAX, 1.0), Duration::from_secs(1));
    }
}
