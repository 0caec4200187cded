//! Backup and restore of the whole store, online and consistent, in one portable format.
//!
//! A backup is JSON lines, the same from SQLite and PostgreSQL (so a backup of the embedded
//! store restores into PostgreSQL, the usual way out of one instance):
//!
//! ```text
//! {"format":"sekisho-backup","format_version":1,"created_at":…,"source":"sqlite","migrations":[{"version":1,"name":"identity","checksum":"…"},…]}
//! {"table":"users","columns":["id","username",…]}
//! [1,"alice",…]
//! …
//! {"end":true,"rows":{"users":1,…},"sha256":"…"}
//! ```
//!
//! The header names the schema the rows belong to (each migration and its checksum); each table
//! is its column list and one JSON array per row (BIGINT as a number, TEXT as a string, NULL as
//! null); the trailer counts the rows and carries the SHA-256 of every byte before it, so a
//! truncated or altered file is refused before it replaces anything.
//!
//! Consistency: every table is read in one read-only transaction (PostgreSQL `REPEATABLE
//! READ`, SQLite's WAL snapshot), so a running gateway keeps writing while the backup sees one
//! instant. A restore replaces the content of every table in one transaction: all of the backup,
//! or nothing.

use std::io::Write;

use futures_util::TryStreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::migrate::hex;
use crate::{now_millis, Database, DbError, Dialect, MIGRATIONS};

mod restore;
mod tables;

use tables::Kind::{Int, Text};
use tables::TABLES;
pub use tables::{backup_columns, backup_tables};

/// The format's name in the header.
const FORMAT: &str = "sekisho-backup";
/// The format's version: a restore refuses one it does not know.
const FORMAT_VERSION: i64 = 1;
/// Values bound per INSERT: under SQLite's oldest limit of 999 variables.
const VALUES_PER_INSERT: usize = 900;

/// What a backup or a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Rows per table, in restore order.
    pub rows: Vec<(String, u64)>,
    /// Bytes of the file.
    pub bytes: u64,
    /// SHA-256 of everything before the trailer (what the trailer carries).
    pub sha256: String,
    /// When the backup was taken (Unix milliseconds).
    pub created_at: i64,
}

impl BackupSummary {
    /// Every row of every table.
    pub fn total_rows(&self) -> u64 {
        self.rows.iter().map(|(_, rows)| rows).sum()
    }
}

/// Why a backup file cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a backup this sekisho can restore; `line` is 1-based.
    #[error("line {line}: {message}")]
    Invalid {
        /// Where.
        line: u64,
        /// What.
        message: String,
    },
    /// The database is not at this sekisho's schema.
    #[error("{0}")]
    Schema(String),
}

/// Seconds from `at` (Unix milliseconds) to now, never below zero.
fn seconds_since(at: i64) -> f64 {
    now_millis().saturating_sub(at).max(0) as f64 / 1000.0
}

fn invalid(line: u64, message: impl Into<String>) -> BackupError {
    BackupError::Invalid {
        line,
        message: message.into(),
    }
}

impl From<sqlx::Error> for BackupError {
    fn from(error: sqlx::Error) -> Self {
        Self::Db(DbError::Sql(error))
    }
}

/// The first line (a struct, so that its fields keep this order: `format` first).
#[derive(serde::Serialize)]
struct Header {
    format: &'static str,
    format_version: i64,
    created_at: i64,
    source: &'static str,
    migrations: Vec<HeaderMigration>,
}

#[derive(serde::Serialize)]
struct HeaderMigration {
    version: i64,
    name: &'static str,
    checksum: String,
}

/// Bytes written, hashed as they go.
struct Hashing<W> {
    out: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn line(&mut self, value: &impl serde::Serialize) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(value)?;
        text.push(b'\n');
        self.hash.update(&text);
        self.bytes += text.len() as u64;
        self.out.write_all(&text)
    }
}

impl Database {
    /// Writes a consistent copy of every table to `out` (see the module's documentation), while
    /// the gateway may go on writing. The database must be at this sekisho's schema.
    pub async fn backup(&self, out: impl Write) -> Result<BackupSummary, BackupError> {
        let states = self.status().await?;
        if let Some(state) = states.iter().find(|s| s.applied_at.is_none() || s.changed) {
            return Err(BackupError::Schema(format!(
                "the database is not at this sekisho's schema (migration {} ({}) is {}): run \
                 `sekisho migrate`, or back up with the sekisho that runs on it",
                state.version,
                state.name,
                if state.applied_at.is_none() {
                    "pending"
                } else {
                    "changed or unknown"
                }
            )));
        }
        let created_at = now_millis();
        let mut out = Hashing {
            out,
            hash: Sha256::new(),
            bytes: 0,
        };
        let header = Header {
            format: FORMAT,
            format_version: FORMAT_VERSION,
            created_at,
            source: match self.dialect() {
                Dialect::Sqlite => "sqlite",
                Dialect::Postgres => "postgres",
            },
            migrations: MIGRATIONS
                .iter()
                .map(|m| HeaderMigration {
                    version: m.version,
                    name: m.name,
                    checksum: m.checksum(),
                })
                .collect(),
        };
        out.line(&header)?;

        let mut transaction = self.pool().begin().await?;
        if self.dialect() == Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *transaction)
                .await?;
        }
        let mut rows = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
            out.line(&serde_json::json!({ "table": table.name, "columns": names }))?;
            let order = if table.columns.iter().any(|(name, _)| *name == "id") {
                "id".to_owned()
            } else {
                names.join(", ")
            };
            let select = format!(
                "SELECT {} FROM {} ORDER BY {order}",
                names.join(", "),
                table.name
            );
            let mut stream = sqlx::query(&select).fetch(&mut *transaction);
            let mut count = 0_u64;
            while let Some(row) = stream.try_next().await? {
                let mut values = Vec::with_capacity(table.columns.len());
                for (index, (_, kind)) in table.columns.iter().enumerate() {
                    values.push(match kind {
                        Int => row
                            .try_get::<Option<i64>, _>(index)?
                            .map_or(Value::Null, Value::from),
                        Text => row
                            .try_get::<Option<String>, _>(index)?
                            .map_or(Value::Null, Value::from),
                    });
                }
                out.line(&Value::Array(values))?;
                count += 1;
            }
            drop(stream);
            rows.push((table.name.to_owned(), count));
        }
        transaction.rollback().await?;

        let sha256 = hex(&out.hash.clone().finalize());
        let counts: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(name, count)| (name.clone(), Value::from(*count)))
            .collect();
        out.line(&serde_json::json!({ "end": true, "rows": counts, "sha256": sha256 }))?;
        out.out.flush()?;
        Ok(BackupSummary {
            rows,
            bytes: out.bytes,
            sha256,
            created_at,
        })
    }

    /// Records a backup that reached its destination, for `backup_age`.
    pub async fn record_backup(
        &self,
        destination: &str,
        summary: &BackupSummary,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO backups (finished_at, destination, bytes, rows_copied, sha256) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_millis())
        .bind(destination)
        .bind(i64::try_from(summary.bytes).unwrap_or(i64::MAX))
        .bind(i64::try_from(summary.total_rows()).unwrap_or(i64::MAX))
        .bind(&summary.sha256)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Seconds since the last recorded backup; nothing when there was none (or the database
    /// cannot be read).
    pub async fn last_backup_age(&self) -> Option<f64> {
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(finished_at) FROM backups")
            .fetch_one(self.pool())
            .await
            .ok()?;
        last.map(seconds_since)
    }

    /// Seconds since the last recorded backup or, when there was none, since the store was
    /// made (its first migration): a store never backed up grows old like one whose backups
    /// stopped. Nothing when the database cannot be read.
    pub async fn backup_age(&self) -> Option<f64> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT COALESCE((SELECT MAX(finished_at) FROM backups), (SELECT MIN(applied_at) FROM schema_migrations))",
        )
        .fetch_one(self.pool())
        .await
        .ok()?;
        last.map(seconds_since)
    }
}
