//! Versioned migrations with checksums.
//!
//! Each migration is a SQL file compiled into the binary ([`MIGRATIONS`]); `{id}` in it stands
//! for the dialect's auto-incremented primary key. The table `schema_migrations` records each
//! applied one: version, name, checksum (SHA-256 of the file as written), applied_at and
//! duration (milliseconds). [`Database::migrate`] first compares every recorded checksum with
//! the file's (a difference, or a version this binary does not know, refuses the start), then
//! applies what is pending in version order, each in its own transaction with its record.
//! On PostgreSQL an advisory lock keeps two instances starting together from applying the same
//! migration twice; SQLite's write lock does the same there.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{now_millis, Database, DbError, Dialect};

/// One migration compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version, ascending.
    pub version: i64,
    /// Its name (the file name without version and extension).
    pub name: &'static str,
    /// The SQL as written, `{id}` included.
    pub sql: &'static str,
}

/// Every migration this sekisho carries, in version order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "identity",
        sql: include_str!("../migrations/0001_identity.sql"),
    },
    Migration {
        version: 2,
        name: "notifications",
        sql: include_str!("../migrations/0002_notifications.sql"),
    },
    Migration {
        version: 3,
        name: "alert_history",
        sql: include_str!("../migrations/0003_alert_history.sql"),
    },
    Migration {
        version: 4,
        name: "alert_notified",
        sql: include_str!("../migrations/0004_alert_notified.sql"),
    },
    Migration {
        version: 5,
        name: "silences",
        sql: include_str!("../migrations/0005_silences.sql"),
    },
    Migration {
        version: 6,
        name: "backups",
        sql: include_str!("../migrations/0006_backups.sql"),
    },
    Migration {
        version: 7,
        name: "notifications_order",
        sql: include_str!("../migrations/0007_notifications_order.sql"),
    },
    Migration {
        version: 8,
        name: "audit_task",
        sql: include_str!("../migrations/0008_audit_task.sql"),
    },
    Migration {
        version: 9,
        name: "notifications_claimer",
        sql: include_str!("../migrations/0009_notifications_claimer.sql"),
    },
];

/// Where a migration stands in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// Its version.
    pub version: i64,
    /// Its name.
    pub name: String,
    /// The checksum of the migration in this binary (or, for one it does not know, the one
    /// recorded).
    pub checksum: String,
    /// When it was applied (Unix milliseconds), if it was.
    pub applied_at: Option<i64>,
    /// How long applying it took (milliseconds), if it was.
    pub duration_ms: Option<i64>,
    /// The checksum recorded differs from this binary's.
    pub changed: bool,
}

impl Migration {
    /// SHA-256 of the SQL as written, in hex.
    pub fn checksum(&self) -> String {
        hex(&Sha256::digest(self.sql.as_bytes()))
    }

    fn sql_for(&self, dialect: Dialect) -> String {
        let id = match dialect {
            Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        self.sql.replace("{id}", id)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL
)";

/// A lock number of our own for `pg_advisory_xact_lock` ("sekisho" in ASCII).
const ADVISORY_LOCK: i64 = 0x73_656b_6973_686f;

struct Recorded {
    version: i64,
    name: String,
    checksum: String,
    applied_at: i64,
    duration_ms: i64,
}

impl Database {
    async fn recorded(&self) -> Result<Vec<Recorded>, DbError> {
        sqlx::query(CREATE_TABLE).execute(self.pool()).await?;
        let rows = sqlx::query(
            "SELECT version, name, checksum, applied_at, duration_ms FROM schema_migrations ORDER BY version",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Recorded {
                    version: row.try_get(0)?,
                    name: row.try_get(1)?,
                    checksum: row.try_get(2)?,
                    applied_at: row.try_get(3)?,
                    duration_ms: row.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Each migration, applied or pending, and each applied one this binary does not know.
    pub async fn status(&self) -> Result<Vec<MigrationState>, DbError> {
        let recorded = self.recorded().await?;
        let mut states: Vec<MigrationState> = MIGRATIONS
            .iter()
            .map(|migration| {
                let checksum = migration.checksum();
                let applied = recorded.iter().find(|r| r.version == migration.version);
                MigrationState {
                    version: migration.version,
                    name: migration.name.to_owned(),
                    changed: applied.is_some_and(|r| r.checksum != checksum),
                    checksum,
                    applied_at: applied.map(|r| r.applied_at),
                    duration_ms: applied.map(|r| r.duration_ms),
                }
            })
            .collect();
        for unknown in recorded
            .iter()
            .filter(|r| !MIGRATIONS.iter().any(|m| m.version == r.version))
        {
            states.push(MigrationState {
                version: unknown.version,
                name: unknown.name.clone(),
                checksum: unknown.checksum.clone(),
                applied_at: Some(unknown.applied_at),
                duration_ms: Some(unknown.duration_ms),
                changed: true,
            });
        }
        Ok(states)
    }

    /// Checks what was applied against this binary's migrations, then applies the pending
    /// ones; returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>, DbError> {
        self.verify(&self.recorded().await?)?;
        let mut applied_now = Vec::new();
        for migration in MIGRATIONS {
            let mut transaction = self.pool().begin().await?;
            if self.dialect() == Dialect::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(ADVISORY_LOCK)
                    .execute(&mut *transaction)
                    .await?;
            }
            let already: Option<String> =
                sqlx::query_scalar("SELECT checksum FROM schema_migrations WHERE version = $1")
                    .bind(migration.version)
                    .fetch_optional(&mut *transaction)
                    .await?;
            if already.is_some() {
                transaction.rollback().await?;
                continue;
            }
            let started = std::time::Instant::now();
            sqlx::raw_sql(&migration.sql_for(self.dialect()))
                .execute(&mut *transaction)
                .await?;
            let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at, duration_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(migration.version)
            .bind(migration.name)
            .bind(migration.checksum())
            .bind(now_millis())
            .bind(duration_ms)
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            tracing::info!(
                version = migration.version,
                name = migration.name,
                duration_ms,
                database = %self.url(),
                "migration applied"
            );
            applied_now.push(migration.version);
        }
        Ok(applied_now)
    }

    fn verify(&self, recorded: &[Recorded]) -> Result<(), DbError> {
        for record in recorded {
            let Some(migration) = MIGRATIONS.iter().find(|m| m.version == record.version) else {
                return Err(DbError::UnknownMigration {
                    version: record.version,
                    name: record.name.clone(),
                });
            };
            let expected = migration.checksum();
            if record.checksum != expected {
                return Err(DbError::ChecksumMismatch {
                    version: record.version,
                    name: record.name.clone(),
                    applied: record.checksum.clone(),
                    expected,
                });
            }
        }
        Ok(())
    }
}
