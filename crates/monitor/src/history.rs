//! Alert history in the database (`alert_history`, migration 3 of `sekisho-db`): one row per
//! episode of an alert — fired, its severities, acknowledged (when, by whom), resolved — kept
//! `history_retention` after it resolved, with the statistics the admin API shows (alerts fired
//! and resolved in the last 24 h, active now, mean time to resolve).
//!
//! The monitor's cycle says what happened as [`HistoryEvent`]s ([`crate::Monitor::take_history`]);
//! the binary writes them here in order. An alert that fires while an episode of its
//! fingerprint is still open (a gateway restarted while it fired) continues that episode, so a
//! restart does not split one outage in two. With `alert_notified` (what each receiver was
//! told), the open episodes are also what a restarted monitor puts back (`restore.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use sekisho_db::sqlx::{self, any::AnyRow, Row};
use sekisho_db::{Database, DbError};

use crate::manager::{Labels, Severity};
use crate::restore::{RestoredAlert, Told};

/// What happened to an alert, for the history.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryEvent {
    /// It started firing.
    Fired {
        /// Its fingerprint.
        fingerprint: String,
        /// Its labels.
        labels: Labels,
        /// Its annotations.
        annotations: Labels,
        /// Its severity.
        severity: Severity,
        /// When (Unix ms).
        at: i64,
    },
    /// Its severity changed while it fired.
    Severity {
        /// Its fingerprint.
        fingerprint: String,
        /// The new severity.
        severity: Severity,
        /// When (Unix ms).
        at: i64,
    },
    /// Its condition cleared.
    Resolved {
        /// Its fingerprint.
        fingerprint: String,
        /// When (Unix ms).
        at: i64,
    },
}

/// One episode of an alert, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    /// Its id (the cursor of pagination).
    pub id: i64,
    /// The alert's fingerprint.
    pub fingerprint: String,
    /// Its `alertname`.
    pub alertname: String,
    /// Its `target`.
    pub target: String,
    /// Its labels.
    pub labels: serde_json::Value,
    /// Its annotations (as last seen).
    pub annotations: serde_json::Value,
    /// `firing` or `resolved`.
    pub state: String,
    /// The latest severity.
    pub severity: String,
    /// The highest severity it reached.
    pub peak_severity: String,
    /// When it fired (Unix ms).
    pub fired_at: i64,
    /// When it resolved (Unix ms).
    pub resolved_at: Option<i64>,
    /// How long it fired (ms), once resolved.
    pub duration_ms: Option<i64>,
    /// When it was acknowledged (Unix ms).
    pub acked_at: Option<i64>,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
}

/// Which episodes a page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Only `firing` (open) or only `resolved` ones.
    pub state: Option<String>,
    /// Only this alert.
    pub fingerprint: Option<String>,
    /// Only alerts of this name.
    pub alertname: Option<String>,
    /// Only those fired at or after this (Unix ms).
    pub since: Option<i64>,
}

/// The admin API's statistics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryStats {
    /// Episodes that fired in the last 24 hours.
    pub fired_last_24h: i64,
    /// Episodes that resolved in the last 24 hours.
    pub resolved_last_24h: i64,
    /// Episodes firing now.
    pub active: i64,
    /// … of which acknowledged.
    pub active_acknowledged: i64,
    /// Mean time from firing to resolution of those resolved in the last 24 hours (seconds).
    pub mean_time_to_resolve_seconds: Option<f64>,
    /// Episodes fired in the last 24 hours by their highest severity.
    pub fired_last_24h_by_severity: std::collections::BTreeMap<String, i64>,
}

/// The history on a database (a cheap clone).
#[derive(Debug, Clone)]
pub struct History {
    database: Database,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

const COLUMNS: &str = "id, fingerprint, alertname, target, labels, annotations, severity, \
     peak_severity, fired_at, resolved_at, acked_at, acked_by";

fn rank(severity: Severity) -> i64 {
    match severity {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
        Severity::Emergency => 3,
    }
}

impl History {
    /// The history on `database` (migrated by whoever opened it: the outbox does).
    pub fn new(database: Database) -> Self {
        Self { database }
    }

    /// Records `event`.
    pub async fn record(&self, event: &HistoryEvent) -> Result<(), DbError> {
        let pool = self.database.pool();
        match event {
            HistoryEvent::Fired {
                fingerprint,
                labels,
                annotations,
                severity,
                at,
            } => {
                let annotations = serde_json::to_string(annotations).unwrap_or_default();
                // An open episode of the same alert goes on (a restart while it fired).
                let continued = self
                    .change_severity(fingerprint, *severity, Some(&annotations), *at)
                    .await?;
                if continued {
                    return Ok(());
                }
                let field = |name: &str| labels.get(name).cloned().unwrap_or_default();
                sqlx::query(
                    "INSERT INTO alert_history (fingerprint, alertname, target, labels, \
                     annotations, severity, peak_severity, peak_rank, fired_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $8)",
                )
                .bind(fingerprint)
                .bind(field("alertname"))
                .bind(field("target"))
                .bind(serde_json::to_string(labels).unwrap_or_default())
                .bind(annotations)
                .bind(severity.as_str())
                .bind(rank(*severity))
                .bind(*at)
                .execute(pool)
                .await?;
            }
            HistoryEvent::Severity {
                fingerprint,
                severity,
                at,
            } => {
                self.change_severity(fingerprint, *severity, None, *at)
                    .await?;
            }
            HistoryEvent::Resolved { fingerprint, at } => {
                sqlx::query(
                    "UPDATE alert_history SET resolved_at = $1, updated_at = $1 \
                     WHERE fingerprint = $2 AND resolved_at IS NULL",
                )
                .bind(*at)
                .bind(fingerprint)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Sets the open episode's severity (and its peak when higher); whether there was one.
    async fn change_severity(
        &self,
        fingerprint: &str,
        severity: Severity,
        annotations: Option<&str>,
        at: i64,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE alert_history SET severity = $1, \
             peak_severity = CASE WHEN $2 > peak_rank THEN $1 ELSE peak_severity END, \
             peak_rank = CASE WHEN $2 > peak_rank THEN $2 ELSE peak_rank END, \
             annotations = COALESCE($3, annotations), updated_at = $4 \
             WHERE fingerprint = $5 AND resolved_at IS NULL",
        )
        .bind(severity.as_str())
        .bind(rank(severity))
        .bind(annotations)
        .bind(at)
        .bind(fingerprint)
        .execute(self.database.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that `by` acknowledged the open episode of `fingerprint` at `at`; whether there
    /// was one.
    pub async fn acknowledge(&self, fingerprint: &str, by: &str, at: i64) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE alert_history SET acked_at = $1, acked_by = $2, updated_at = $1 \
             WHERE fingerprint = $3 AND resolved_at IS NULL",
        )
        .bind(at)
        .bind(by)
        .bind(fingerprint)
        .execute(self.database.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Episodes newest first: at most `limit` matching `filter` with an id below `before` (the
    /// previous page's last id).
    pub async fn list(
        &self,
        filter: &HistoryFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, DbError> {
        let mut conditions = vec!["id < $1".to_owned()];
        let mut texts: Vec<&str> = Vec::new();
        let mut next = 3;
        match filter.state.as_deref() {
            Some("firing") => conditions.push("resolved_at IS NULL".to_owned()),
            Some("resolved") => conditions.push("resolved_at IS NOT NULL".to_owned()),
            _ => {}
        }
        for (column, value) in [
            ("fingerprint", &filter.fingerprint),
            ("alertname", &filter.alertname),
        ] {
            if let Some(value) = value {
                conditions.push(format!("{column} = ${next}"));
                texts.push(value);
                next += 1;
            }
        }
        if filter.since.is_some() {
            conditions.push(format!("fired_at >= ${next}"));
        }
        let statement = format!(
            "SELECT {COLUMNS} FROM alert_history WHERE {} ORDER BY id DESC LIMIT $2",
            conditions.join(" AND ")
        );
        let mut query = sqlx::query(&statement)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        for text in texts {
            query = query.bind(text);
        }
        if let Some(since) = filter.since {
            query = query.bind(since);
        }
        let rows = query.fetch_all(self.database.pool()).await?;
        Ok(rows.iter().map(entry).collect::<Result<_, sqlx::Error>>()?)
    }

    /// The statistics at `now` (Unix ms).
    pub async fn stats(&self, now: i64) -> Result<HistoryStats, DbError> {
        let pool = self.database.pool();
        let day_ago = now.saturating_sub(DAY_MS);
        let fired: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM alert_history WHERE fired_at >= $1")
                .bind(day_ago)
                .fetch_one(pool)
                .await?;
        // Sums as BIGINT: PostgreSQL's SUM and AVG of a BIGINT are NUMERIC.
        let resolved = sqlx::query(
            "SELECT COUNT(*), CAST(SUM(resolved_at - fired_at) AS BIGINT) FROM alert_history \
             WHERE resolved_at >= $1",
        )
        .bind(day_ago)
        .fetch_one(pool)
        .await?;
        let resolved_count: i64 = resolved.try_get(0)?;
        let resolved_sum: Option<i64> = resolved.try_get(1)?;
        let active = sqlx::query(
            "SELECT COUNT(*), COUNT(acked_at) FROM alert_history WHERE resolved_at IS NULL",
        )
        .fetch_one(pool)
        .await?;
        let by_severity = sqlx::query(
            "SELECT peak_severity, COUNT(*) FROM alert_history WHERE fired_at >= $1 \
             GROUP BY peak_severity",
        )
        .bind(day_ago)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
        Ok(HistoryStats {
            fired_last_24h: fired,
            resolved_last_24h: resolved_count,
            active: active.try_get(0)?,
            active_acknowledged: active.try_get(1)?,
            mean_time_to_resolve_seconds: match (resolved_count, resolved_sum) {
                (count, Some(sum)) if count > 0 => Some(sum as f64 / count as f64 / 1000.0),
                _ => None,
            },
            fired_last_24h_by_severity: by_severity,
        })
    }

    /// Removes episodes resolved longer than `retention` before `now` (Unix ms); how many. Open
    /// ones stay, however old.
    pub async fn purge(&self, retention: Duration, now: i64) -> Result<u64, DbError> {
        let cutoff = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let done = sqlx::query(
            "DELETE FROM alert_history WHERE resolved_at IS NOT NULL AND resolved_at < $1",
        )
        .bind(cutoff)
        .execute(self.database.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

/// A silence as the database keeps it (`silences`, migration 5).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSilence {
    /// Its id, also the manager's.
    pub id: i64,
    /// What it matches.
    pub matchers: Vec<crate::manager::Matcher>,
    /// When it ends (Unix ms).
    pub ends_at: i64,
    /// Why, and who.
    pub comment: String,
}

fn matchers_json(matchers: &[crate::manager::Matcher]) -> String {
    use crate::manager::Matcher;
    let list: Vec<serde_json::Value> = matchers
        .iter()
        .map(|m| match m {
            Matcher::Equal(n, v) => serde_json::json!({"name": n, "value": v, "is_equal": true}),
            Matcher::NotEqual(n, v) => {
                serde_json::json!({"name": n, "value": v, "is_equal": false})
            }
        })
        .collect();
    serde_json::Value::from(list).to_string()
}

fn matchers_of(json: &str) -> Option<Vec<crate::manager::Matcher>> {
    use crate::manager::Matcher;
    let list: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    list.iter()
        .map(|m| {
            let name = m["name"].as_str()?.to_owned();
            let value = m["value"].as_str()?.to_owned();
            Some(if m["is_equal"].as_bool()? {
                Matcher::Equal(name, value)
            } else {
                Matcher::NotEqual(name, value)
            })
        })
        .collect()
}

impl History {
    /// Keeps a new silence; its id.
    pub async fn add_silence(
        &self,
        matchers: &[crate::manager::Matcher],
        ends_at: i64,
        comment: &str,
        now: i64,
    ) -> Result<i64, DbError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO silences (matchers, ends_at, comment, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(matchers_json(matchers))
        .bind(ends_at)
        .bind(comment)
        .bind(now)
        .fetch_one(self.database.pool())
        .await?;
        Ok(id)
    }

    /// Ends silence `id` at `now` (an operator ended it early).
    pub async fn expire_silence(&self, id: i64, now: i64) -> Result<(), DbError> {
        sqlx::query("UPDATE silences SET expired_at = $1 WHERE id = $2 AND expired_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(self.database.pool())
            .await?;
        Ok(())
    }

    /// The silences still in force at `now`, oldest first (a row whose matchers cannot be read
    /// is skipped).
    pub async fn active_silences(&self, now: i64) -> Result<Vec<StoredSilence>, DbError> {
        let rows = sqlx::query(
            "SELECT id, matchers, ends_at, comment FROM silences \
             WHERE expired_at IS NULL AND ends_at > $1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(self.database.pool())
        .await?;
        let mut silences = Vec::new();
        for row in &rows {
            let matchers: String = row.try_get(1)?;
            let Some(matchers) = matchers_of(&matchers) else {
                continue;
            };
            silences.push(StoredSilence {
                id: row.try_get(0)?,
                matchers,
                ends_at: row.try_get(2)?,
                comment: row.try_get(3)?,
            });
        }
        Ok(silences)
    }
}

impl History {
    /// Records what a notification told a receiver (see `restore.rs`): `firing` is remembered
    /// with its severity, `resolved` forgets.
    pub async fn record_told(&self, told: &Told, at: i64) -> Result<(), DbError> {
        let pool = self.database.pool();
        match told {
            Told::Firing {
                fingerprint,
                receiver,
                severity,
            } => {
                sqlx::query(
                    "INSERT INTO alert_notified (fingerprint, receiver, severity, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint, receiver) \
                     DO UPDATE SET severity = excluded.severity, updated_at = excluded.updated_at",
                )
                .bind(fingerprint)
                .bind(receiver)
                .bind(severity.as_str())
                .bind(at)
                .execute(pool)
                .await?;
            }
            Told::Resolved {
                fingerprint,
                receiver,
            } => {
                sqlx::query("DELETE FROM alert_notified WHERE fingerprint = $1 AND receiver = $2")
                    .bind(fingerprint)
                    .bind(receiver)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// The alerts a previous run knew (see `restore.rs`): each open episode, with the receivers
    /// that were told it fires; and each alert a receiver still believes firing whose episode
    /// has closed, as resolved. What a receiver believes of an alert with no episode left (its
    /// history removed) is forgotten.
    pub async fn restorable(&self) -> Result<Vec<RestoredAlert>, DbError> {
        let pool = self.database.pool();
        let mut told: BTreeMap<String, BTreeMap<String, Severity>> = BTreeMap::new();
        let rows = sqlx::query("SELECT fingerprint, receiver, severity FROM alert_notified")
            .fetch_all(pool)
            .await?;
        for row in &rows {
            let fingerprint: String = row.try_get(0)?;
            let receiver: String = row.try_get(1)?;
            let severity: String = row.try_get(2)?;
            if let Some(severity) = Severity::parse(&severity) {
                told.entry(fingerprint)
                    .or_default()
                    .insert(receiver, severity);
            }
        }
        let open = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM alert_history WHERE resolved_at IS NULL ORDER BY id"
        ))
        .fetch_all(pool)
        .await?;
        let mut restored = Vec::new();
        for row in &open {
            let episode = entry(row)?;
            let told = told.remove(&episode.fingerprint).unwrap_or_default();
            restored.extend(restored_alert(episode, told));
        }
        // Believed firing, but no open episode: it cleared before its `resolved` was written.
        for (fingerprint, receivers) in told {
            let latest = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM alert_history WHERE fingerprint = $1 \
                 ORDER BY id DESC LIMIT 1"
            ))
            .bind(&fingerprint)
            .fetch_optional(pool)
            .await?;
            match latest {
                Some(row) => restored.extend(restored_alert(entry(&row)?, receivers)),
                None => {
                    sqlx::query("DELETE FROM alert_notified WHERE fingerprint = $1")
                        .bind(&fingerprint)
                        .execute(pool)
                        .await?;
                }
            }
        }
        Ok(restored)
    }
}

/// An episode as an alert to put back; `None` when it cannot be read back or, resolved, no
/// receiver is owed its `resolved`.
fn restored_alert(
    episode: HistoryEntry,
    told: BTreeMap<String, Severity>,
) -> Option<RestoredAlert> {
    if episode.resolved_at.is_some() && told.is_empty() {
        return None;
    }
    let map =
        |value: serde_json::Value| -> Labels { serde_json::from_value(value).unwrap_or_default() };
    let labels = map(episode.labels);
    if labels.is_empty() {
        return None;
    }
    Some(RestoredAlert {
        fingerprint: episode.fingerprint,
        labels,
        annotations: map(episode.annotations),
        severity: Severity::parse(&episode.severity)?,
        fired_at: episode.fired_at,
        resolved_at: episode.resolved_at,
        acked: episode.acked_at.is_some(),
        told,
    })
}

fn entry(row: &AnyRow) -> Result<HistoryEntry, sqlx::Error> {
    let json = |index: usize| -> Result<serde_json::Value, sqlx::Error> {
        let text: String = row.try_get(index)?;
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    };
    let fired_at: i64 = row.try_get(8)?;
    let resolved_at: Option<i64> = row.try_get(9)?;
    Ok(HistoryEntry {
        id: row.try_get(0)?,
        fingerprint: row.try_get(1)?,
        alertname: row.try_get(2)?,
        target: row.try_get(3)?,
        labels: json(4)?,
        annotations: json(5)?,
        state: if resolved_at.is_some() {
            "resolved"
        } else {
            "firing"
        }
        .to_owned(),
        severity: row.try_get(6)?,
        peak_severity: row.try_get(7)?,
        fired_at,
        resolved_at,
        duration_ms: resolved_at.map(|r| r.saturating_sub(fired_at)),
        acked_at: row.try_get(10)?,
        acked_by: row.try_get(11)?,
    })
}
