//! The notification outbox: every notification is a row of the database (`notifications`,
//! migration 2 of `sekisho-db`) before anything is sent, and stays one — pending, delivered or
//! dead — as the delivery log.
//!
//! - **Claiming**: a worker takes due rows by moving their `next_attempt_at` a lease ahead and
//!   counting the attempt, in one statement; on PostgreSQL `FOR UPDATE SKIP LOCKED` lets several
//!   gateways share the rows without two taking the same one; on SQLite the single connection
//!   serialises claimers. A worker that dies mid-delivery leaves its row pending: another (or
//!   the restarted one) takes it again — on PostgreSQL as soon as the dead worker's claiming
//!   connection is gone (its backend pid is on the row), else when the lease ends — delivery is at least once, and each
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

use sekisho_db::sqlx::{self, Row};
use sekisho_db::{now_millis, Database, DbError, Dialect};
use serde_json::Value;
use tokio::sync::Notify;

pub use crate::channels::shown_url;

mod log;
mod tasks;
use crate::channels::Channel;
use crate::tasks::Runners;

/// One notification on its way to one channel of a receiver.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The receiver's name.
    pub receiver: String,
    /// The channel.
    pub channel: Channel,
    /// Where it is POSTed.
    pub url: String,
    /// The alert group it is about.
    pub group_key: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The fingerprints of its alerts.
    pub fingerprints: Vec<String>,
    /// The body, in the channel's shape.
    pub body: Value,
}
pub use log::LoggedNotification;
pub(crate) use tasks::run as run_tasks;

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
    /// Who runs the tasks of each handler (`tasks.rs`).
    runners: Runners,
    /// On PostgreSQL, the connection claims are made on, held for the outbox's life (see
    /// [`Outbox::claim`]).
    claimer: Arc<tokio::sync::Mutex<Claimer>>,
}

/// A connection of its own, out of the pool (which could close it while a claim made on it is
/// being delivered): its backend pid marks the rows it claimed as held by a live worker.
#[derive(Default)]
struct Claimer(Option<sqlx::AnyConnection>);

impl std::fmt::Debug for Claimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Claimer(connected)"
        } else {
            "Claimer(none)"
        })
    }
}

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
            runners: Runners::default(),
            claimer: Arc::default(),
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

    /// Who runs the tasks here.
    pub(crate) fn runners(&self) -> &Runners {
        &self.runners
    }

    /// Wakes the local worker: a row was written.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
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
    ///
    /// On PostgreSQL a claim also notes the backend pid of the connection it was made on (one
    /// held for the outbox's life, out of the pool): a pending row whose claimer's backend is
    /// gone — its gateway was killed mid-attempt — is taken again at once rather than when its
    /// lease ends. A live claimer keeps its rows for the lease, as before.
    pub async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, DbError> {
        let now = now_millis();
        let lease_end = now.saturating_add(i64::try_from(LEASE.as_millis()).unwrap_or(30_000));
        // On SQLite, `+` keeps the due time out of the index choice, so that the pending rows
        // are walked in id order (`notifications_pending_order`) up to the limit rather than all
        // gathered by due time and sorted (migration 7).
        let (claimer, due, lock) = match self.database.dialect() {
            Dialect::Postgres => (
                ", claimed_by = pg_backend_pid()",
                "(n.next_attempt_at <= $2 OR (n.claimed_by IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM pg_stat_activity a WHERE a.pid = n.claimed_by)))",
                "FOR UPDATE OF n SKIP LOCKED",
            ),
            Dialect::Sqlite => ("", "+n.next_attempt_at <= $2", ""),
        };
        let statement = format!(
            "UPDATE notifications SET next_attempt_at = $1, attempts = attempts + 1{claimer} \
             WHERE id IN (SELECT n.id FROM notifications n \
                 WHERE n.state = 'pending' AND {due} \
                 AND NOT EXISTS (SELECT 1 FROM notifications e \
                     WHERE e.lane = n.lane AND e.state = 'pending' AND e.id < n.id) \
                 ORDER BY n.id LIMIT $3 {lock}) \
             RETURNING id, receiver, url, payload, attempts, created_at, channel"
        );
        let query = sqlx::query(&statement)
            .bind(lease_end)
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = match self.database.dialect() {
            Dialect::Sqlite => query.fetch_all(self.database.pool()).await?,
            Dialect::Postgres => {
                let mut claimer = self.claimer.lock().await;
                let connection = match &mut claimer.0 {
                    Some(connection) => connection,
                    empty => empty.insert(self.database.pool().acquire().await?.detach()),
                };
                match query.fetch_all(connection).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        // Perhaps the connection broke: the next claim makes a new one.
                        claimer.0 = None;
                        return Err(error.into());
                    }
                }
            }
        };
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
             last_status = $2, last_latency_ms = $3, claimed_by = NULL WHERE id = $4",
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
             last_error = $4, last_status = $5, last_latency_ms = $6, claimed_by = NULL \
             WHERE id = $7",
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

    /// Removes finished rows older than the retention — a task done, after at most
    /// [`crate::tasks::DONE_TASK_RETENTION`] (it is not a notification anyone looks back on; a
    /// dead one stays for the retention) — and returns how many.
    pub async fn purge(&self) -> Result<u64, DbError> {
        let now = now_millis();
        let cutoff = now.saturating_sub(millis(self.settings.retention));
        let tasks_cutoff = now.saturating_sub(millis(
            self.settings
                .retention
                .min(crate::tasks::DONE_TASK_RETENTION),
        ));
        let done = sqlx::query(
            "DELETE FROM notifications WHERE state <> 'pending' AND (finished_at < $1 \
             OR (channel = $2 AND state = 'delivered' AND finished_at < $3))",
        )
        .bind(cutoff)
        .bind(crate::tasks::TASK_CHANNEL)
        .bind(tasks_cutoff)
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

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
