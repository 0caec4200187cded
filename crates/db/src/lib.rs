//! sekisho-db: the database layer — SQLite (embedded, under `store.data_dir`) or PostgreSQL
//! (`store.database = "postgres://…"`), through sqlx's `Any` driver so that the same queries run
//! on both, and versioned migrations with checksums.
//!
//! What it is for: [`Database::open`] (a connection pool), [`Database::migrate`] (applies what
//! is pending, refuses a changed applied migration), [`Database::status`] (`sekisho migrate
//! --status`), [`Database::backup`] and [`Database::restore`] (`sekisho backup` / `restore`: the
//! whole store in one portable, checksummed file, online and consistent). The queries themselves belong to their owners (`sekisho-auth`); they write `$1`
//! placeholders, BIGINT times in Unix milliseconds and 0/1 flags, which both dialects read alike.
//!
//! What it refuses to do: build SQL from values (every value is bound), check queries against a
//! live database at build time (no sqlx macros), or start over a schema that does not match the
//! migrations it was made from: a changed checksum is an error naming the migration.

mod backup;
mod migrate;
pub mod testing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;

pub use backup::{backup_columns, backup_tables, BackupError, BackupSummary};
pub use migrate::{Migration, MigrationState, MIGRATIONS};
pub use sqlx;

/// Which database a [`Database`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The embedded default.
    Sqlite,
    /// `store.database = "postgres://…"`.
    Postgres,
}

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The driver failed (connection, query, constraint).
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// `store.database` names no database we speak.
    #[error("store.database must be a postgres:// (or postgresql://) URL, not `{0}`")]
    UnsupportedUrl(String),
    /// The data directory could not be made.
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A migration already applied is not the one this binary carries.
    #[error(
        "migration {version} ({name}) was applied with checksum {applied} but this sekisho carries \
         checksum {expected}: the applied schema was changed or comes from another build; \
         refusing to start (restore the database, or run the sekisho that applied it)"
    )]
    ChecksumMismatch {
        /// The migration's version.
        version: i64,
        /// Its name.
        name: String,
        /// The checksum recorded when it was applied.
        applied: String,
        /// The checksum of the migration in this binary.
        expected: String,
    },
    /// The database holds a migration this binary does not know (a newer sekisho applied it).
    #[error("migration {version} ({name}) is applied but unknown to this sekisho: it comes from a newer version; refusing to start")]
    UnknownMigration {
        /// Its version.
        version: i64,
        /// Its name.
        name: String,
    },
}

/// Read-only connections beside SQLite's one writer.
const SQLITE_READERS: u32 = 4;

/// A pool of connections to the database, SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    /// Reads that must not wait behind a writer (SQLite: read-only connections of their own;
    /// PostgreSQL: the same pool).
    reader: AnyPool,
    dialect: Dialect,
    url: String,
}

/// The database `store` names: `store.database` when set, else `sekisho.db` under
/// `store.data_dir` (taken relative to `base_dir`, the config file's directory, when relative).
pub fn database_url(store: &sekisho_config::Store, base_dir: Option<&Path>) -> String {
    match &store.database {
        Some(url) => url.clone(),
        None => {
            let dir = data_dir(store, base_dir);
            format!("sqlite://{}?mode=rwc", dir.join("sekisho.db").display())
        }
    }
}

/// `store.data_dir`, taken relative to `base_dir` (the config file's directory) when relative.
pub fn data_dir(store: &sekisho_config::Store, base_dir: Option<&Path>) -> PathBuf {
    let dir = Path::new(&store.data_dir);
    match base_dir {
        Some(base) if dir.is_relative() => base.join(dir),
        _ => dir.to_owned(),
    }
}

impl Database {
    /// Opens the database `store` names (creating the SQLite file and its directory when
    /// needed), with at most `max_connections` connections.
    pub async fn open(
        store: &sekisho_config::Store,
        base_dir: Option<&Path>,
        max_connections: u32,
    ) -> Result<Self, DbError> {
        if store.database.is_none() {
            let dir = data_dir(store, base_dir);
            std::fs::create_dir_all(&dir).map_err(|source| DbError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        Self::connect(&database_url(store, base_dir), max_connections).await
    }

    /// Opens the database at `url` (`sqlite://PATH?mode=rwc`, `postgres://…`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(redact(url)));
        };
        // SQLite: one connection. Its writers take one lock for the whole file, and a deferred
        // transaction that reads and then writes fails at once (SQLITE_BUSY, no waiting) when
        // another connection wrote meanwhile; one connection serialises them instead.
        let max_connections = match dialect {
            Dialect::Sqlite => 1,
            Dialect::Postgres => max_connections.max(1),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL: readers do not wait for the writer. `synchronous = NORMAL`, the
                        // setting WAL is meant for: a commit does not wait for the disk (the
                        // WAL is synced at checkpoints), so it stays consistent after a crash
                        // but may lose the last commits on a power cut — sessions and audit
                        // rows of the last moments, never a corrupt file.
                        use sqlx::Executor;
                        connection.execute("PRAGMA journal_mode = WAL").await?;
                        connection.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let reader = match dialect {
            // WAL lets readers run beside the one writer: the request path's reads (a session
            // not yet in memory, a user's identity) do not wait for a background write or an
            // operator's transaction holding the write lock.
            Dialect::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(SQLITE_READERS)
                    .acquire_timeout(Duration::from_secs(5))
                    .after_connect(|connection, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            connection.execute("PRAGMA query_only = ON").await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            Dialect::Postgres => pool.clone(),
        };
        Ok(Self {
            pool,
            reader,
            dialect,
            url: redact(url),
        })
    }

    /// The pool, for the queries of the crates that own them.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool for reads that must not wait behind a writer (the request path's): on SQLite
    /// read-only connections beside the writer's, on PostgreSQL the same pool. What a reader
    /// reads is what was committed when its statement began.
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// SQLite or PostgreSQL.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The URL without its password, for logs.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.reader.close().await;
        self.pool.close().await;
    }

    /// One round trip (`SELECT 1`), for health checks and `database_rtt`.
    pub async fn ping(&self) -> Result<Duration, DbError> {
        let started = std::time::Instant::now();
        let _: Option<AnyRow> = sqlx::query("SELECT 1").fetch_optional(&self.pool).await?;
        Ok(started.elapsed())
    }
}

/// `url` without the password of its authority.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Milliseconds since the Unix epoch, the unit of every time in the database.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_urls() {
        assert_eq!(
            redact("postgres://user:secret@host:5432/db"),
            "postgres://user:***@host:5432/db"
        );
        assert_eq!(redact("postgres://host/db"), "postgres://host/db");
        assert_eq!(redact("sqlite://./x.db"), "sqlite://./x.db");
    }
}
