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

use std::io::{BufRead, Write};

use futures_util::TryStreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::migrate::hex;
use crate::{now_millis, Database, DbError, Dialect, MIGRATIONS};

/// The format's name in the header.
const FORMAT: &str = "sekisho-backup";
/// The format's version: a restore refuses one it does not know.
const FORMAT_VERSION: i64 = 1;
/// Values bound per INSERT: under SQLite's oldest limit of 999 variables.
const VALUES_PER_INSERT: usize = 900;

/// What a column holds: every column of the schema is one of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
}

/// A table of the store, its columns, and whether `id` is auto-incremented.
#[derive(Debug)]
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    serial_id: bool,
}

use Kind::{Int, Text};

/// Every table of the store but `schema_migrations`, parents before the tables that refer to
/// them (a restore inserts in this order and empties in the reverse one). A test compares it
/// with the migrated schema on both engines, so a migration that adds a table or a column and
/// forgets it here fails there.
const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            ("id", Int),
            ("username", Text),
            ("password_hash", Text),
            ("disabled", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("last_login_at", Int),
            ("locked_until", Int),
        ],
        serial_id: true,
    },
    Table {
        name: "roles",
        columns: &[("id", Int), ("name", Text), ("created_at", Int)],
        serial_id: true,
    },
    Table {
        name: "permissions",
        columns: &[("id", Int), ("name", Text)],
        serial_id: true,
    },
    Table {
        name: "user_roles",
        columns: &[("user_id", Int), ("role_id", Int)],
        serial_id: false,
    },
    Table {
        name: "role_permissions",
        columns: &[("role_id", Int), ("permission_id", Int)],
        serial_id: false,
    },
    Table {
        name: "sessions",
        columns: &[
            ("id", Text),
            ("user_id", Int),
            ("access_hash", Text),
            ("access_expires_at", Int),
            ("refresh_hash", Text),
            ("refresh_expires_at", Int),
            ("expires_at", Int),
            ("created_at", Int),
            ("client_ip", Text),
        ],
        serial_id: false,
    },
    Table {
        name: "spent_refresh_tokens",
        columns: &[
            ("token_hash", Text),
            ("session_id", Text),
            ("expires_at", Int),
        ],
        serial_id: false,
    },
    Table {
        name: "audit_log",
        columns: &[
            ("id", Int),
            ("at", Int),
            ("event", Text),
            ("username", Text),
            ("client_ip", Text),
            ("detail", Text),
        ],
        serial_id: true,
    },
    Table {
        name: "notifications",
        columns: &[
            ("id", Int),
            ("receiver", Text),
            ("channel", Text),
            ("url", Text),
            ("lane", Text),
            ("group_key", Text),
            ("status", Text),
            ("fingerprints", Text),
            ("payload", Text),
            ("state", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("last_error", Text),
            ("last_status", Int),
            ("last_latency_ms", Int),
            ("created_at", Int),
            ("delivered_at", Int),
            ("finished_at", Int),
        ],
        serial_id: true,
    },
    Table {
        name: "alert_history",
        columns: &[
            ("id", Int),
            ("fingerprint", Text),
            ("alertname", Text),
            ("target", Text),
            ("labels", Text),
            ("annotations", Text),
            ("severity", Text),
            ("peak_severity", Text),
            ("peak_rank", Int),
            ("fired_at", Int),
            ("resolved_at", Int),
            ("acked_at", Int),
            ("acked_by", Text),
            ("updated_at", Int),
        ],
        serial_id: true,
    },
    Table {
        name: "alert_notified",
        columns: &[
            ("fingerprint", Text),
            ("receiver", Text),
            ("severity", Text),
            ("updated_at", Int),
        ],
        serial_id: false,
    },
    Table {
        name: "silences",
        columns: &[
            ("id", Int),
            ("matchers", Text),
            ("ends_at", Int),
            ("comment", Text),
            ("created_at", Int),
            ("expired_at", Int),
        ],
        serial_id: true,
    },
    Table {
        name: "backups",
        columns: &[
            ("id", Int),
            ("finished_at", Int),
            ("destination", Text),
            ("bytes", Int),
            ("rows_copied", Int),
            ("sha256", Text),
        ],
        serial_id: true,
    },
];

/// The tables a backup holds, in restore order, for tests and tools.
pub fn backup_tables() -> Vec<&'static str> {
    TABLES.iter().map(|table| table.name).collect()
}

/// The columns of `table` a backup holds.
pub fn backup_columns(table: &str) -> Option<Vec<&'static str>> {
    TABLES
        .iter()
        .find(|t| t.name == table)
        .map(|t| t.columns.iter().map(|(name, _)| *name).collect())
}

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
        Some(now_millis().saturating_sub(last?).max(0) as f64 / 1000.0)
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
        let last = last?;
        Some(now_millis().saturating_sub(last).max(0) as f64 / 1000.0)
    }

    /// Replaces the content of every table with the backup read from `input`, in one
    /// transaction: the file is checked line by line as it is loaded, and anything wrong — a
    /// schema this sekisho does not carry, a malformed row, a trailer whose checksum or counts
    /// differ (a truncated or altered file) — rolls everything back. Applies this sekisho's
    /// pending migrations once the file's header is read and accepted (a file that is not a
    /// backup leaves the database untouched). Run it against a stopped instance's store: a
    /// running gateway keeps what it cached.
    pub async fn restore(&self, input: impl BufRead) -> Result<BackupSummary, BackupError> {
        let mut lines = Numbered {
            lines: input.lines(),
            number: 0,
        };
        let mut hash = Sha256::new();
        let mut bytes = 0_u64;

        let (line, text) = lines
            .next()?
            .ok_or_else(|| invalid(1, "the file is empty"))?;
        let header: Value = serde_json::from_str(&text)
            .map_err(|e| invalid(line, format!("not a sekisho backup header: {e}")))?;
        if header.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(invalid(
                line,
                "not a sekisho backup (no \"format\":\"sekisho-backup\")",
            ));
        }
        let version = header.get("format_version").and_then(Value::as_i64);
        if version != Some(FORMAT_VERSION) {
            return Err(invalid(
                line,
                format!("backup format version {version:?}: this sekisho reads version {FORMAT_VERSION}"),
            ));
        }
        check_migrations(line, &header)?;
        let created_at = header
            .get("created_at")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        feed(&mut hash, &mut bytes, &text);

        // Only a file that is a backup of this sekisho's schema touches the database.
        self.migrate().await?;
        let mut transaction = self.pool().begin().await?;
        for table in TABLES.iter().rev() {
            sqlx::query(&format!("DELETE FROM {}", table.name))
                .execute(&mut *transaction)
                .await?;
        }

        let mut rows: Vec<(String, u64)> = Vec::new();
        let mut current: Option<Section> = None;
        let trailer = loop {
            let (line, text) = lines.next()?.ok_or_else(|| {
                invalid(
                    lines.number + 1,
                    "the file ends before its trailer: truncated",
                )
            })?;
            let value: Value =
                serde_json::from_str(&text).map_err(|e| invalid(line, format!("not JSON: {e}")))?;
            match value {
                Value::Array(row) => {
                    let Some((table, columns, pending)) = current.as_mut() else {
                        return Err(invalid(line, "a row before any table"));
                    };
                    if row.len() != columns.len() {
                        return Err(invalid(
                            line,
                            format!(
                                "a row of {} values in table {} of {} columns",
                                row.len(),
                                table.name,
                                columns.len()
                            ),
                        ));
                    }
                    for (value, (_, kind)) in row.iter().zip(columns.iter()) {
                        let fits = match kind {
                            Int => value.is_null() || value.as_i64().is_some(),
                            Text => value.is_null() || value.is_string(),
                        };
                        if !fits {
                            return Err(invalid(
                                line,
                                format!("{value} does not fit a column of table {}", table.name),
                            ));
                        }
                    }
                    pending.push(row);
                    if let Some(last) = rows.last_mut() {
                        last.1 += 1;
                    }
                    if pending.len() * columns.len() >= VALUES_PER_INSERT {
                        insert(&mut transaction, table, columns, pending).await?;
                    }
                    feed(&mut hash, &mut bytes, &text);
                }
                Value::Object(object) if object.contains_key("table") => {
                    if let Some((table, columns, pending)) = current.as_mut() {
                        insert(&mut transaction, table, columns, pending).await?;
                    }
                    current = Some(table_section(line, &object, &rows)?);
                    if let Some((table, _, _)) = &current {
                        rows.push((table.name.to_owned(), 0));
                    }
                    feed(&mut hash, &mut bytes, &text);
                }
                Value::Object(object) if object.get("end") == Some(&Value::Bool(true)) => {
                    if let Some((table, columns, pending)) = current.as_mut() {
                        insert(&mut transaction, table, columns, pending).await?;
                    }
                    break (line, object);
                }
                _ => return Err(invalid(line, "neither a row, a table nor the trailer")),
            }
        };

        let (line, object) = trailer;
        let sha256 = hex(&hash.finalize());
        if object.get("sha256").and_then(Value::as_str) != Some(sha256.as_str()) {
            return Err(invalid(
                line,
                "the checksum differs from the file's content: altered or damaged; nothing restored",
            ));
        }
        for (table, count) in &rows {
            let expected = object
                .get("rows")
                .and_then(|rows| rows.get(table))
                .and_then(Value::as_u64);
            if expected != Some(*count) {
                return Err(invalid(
                    line,
                    format!("table {table}: {count} rows read, the trailer says {expected:?}"),
                ));
            }
        }
        if self.dialect() == Dialect::Postgres {
            for table in TABLES.iter().filter(|t| t.serial_id) {
                sqlx::query(&format!(
                    "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE((SELECT MAX(id) FROM {0}), 0) + 1, false)",
                    table.name
                ))
                .execute(&mut *transaction)
                .await?;
            }
        }
        transaction.commit().await?;
        Ok(BackupSummary {
            rows,
            bytes,
            sha256,
            created_at,
        })
    }
}

/// The lines of a file, counted from 1.
struct Numbered<L> {
    lines: L,
    number: u64,
}

impl<L: Iterator<Item = std::io::Result<String>>> Numbered<L> {
    fn next(&mut self) -> Result<Option<(u64, String)>, BackupError> {
        match self.lines.next() {
            None => Ok(None),
            Some(line) => {
                self.number += 1;
                Ok(Some((self.number, line?)))
            }
        }
    }
}

fn feed(hash: &mut Sha256, bytes: &mut u64, line: &str) {
    hash.update(line.as_bytes());
    hash.update(b"\n");
    *bytes += line.len() as u64 + 1;
}

/// The backup's schema must be this sekisho's, or an earlier one of it: every migration it names
/// carried here with the same checksum.
fn check_migrations(line: u64, header: &Value) -> Result<(), BackupError> {
    let Some(migrations) = header.get("migrations").and_then(Value::as_array) else {
        return Err(invalid(line, "the header names no migrations"));
    };
    for migration in migrations {
        let version = migration.get("version").and_then(Value::as_i64);
        let checksum = migration.get("checksum").and_then(Value::as_str);
        let name = migration.get("name").and_then(Value::as_str).unwrap_or("?");
        let Some(ours) = MIGRATIONS.iter().find(|m| Some(m.version) == version) else {
            return Err(invalid(
                line,
                format!(
                    "the backup comes from a newer sekisho (migration {} ({name}) is unknown here): restore it with that version",
                    version.unwrap_or_default()
                ),
            ));
        };
        if checksum != Some(ours.checksum().as_str()) {
            return Err(invalid(
                line,
                format!(
                    "migration {} ({name}) of the backup differs from this sekisho's: it comes from another build",
                    ours.version
                ),
            ));
        }
    }
    Ok(())
}

type Section = (&'static Table, Vec<(usize, Kind)>, Vec<Vec<Value>>);

/// A table's header line: the table must be one of ours, once, and its columns ours.
fn table_section(
    line: u64,
    object: &serde_json::Map<String, Value>,
    seen: &[(String, u64)],
) -> Result<Section, BackupError> {
    let name = object.get("table").and_then(Value::as_str).unwrap_or("");
    let table = TABLES
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| invalid(line, format!("table `{name}` is not part of the store")))?;
    if seen.iter().any(|(seen, _)| seen == name) {
        return Err(invalid(line, format!("table `{name}` appears twice")));
    }
    let names = object
        .get("columns")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(line, format!("table `{name}` lists no columns")))?;
    let mut columns = Vec::with_capacity(names.len());
    for column in names {
        let column = column.as_str().unwrap_or("");
        let index = table
            .columns
            .iter()
            .position(|(c, _)| *c == column)
            .ok_or_else(|| invalid(line, format!("table `{name}` has no column `{column}`")))?;
        columns.push((index, table.columns[index].1));
    }
    Ok((table, columns, Vec::new()))
}

/// Inserts the pending rows of one table in one statement, and empties them.
async fn insert(
    transaction: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &Table,
    columns: &[(usize, Kind)],
    pending: &mut Vec<Vec<Value>>,
) -> Result<(), BackupError> {
    if pending.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = columns.iter().map(|(i, _)| table.columns[*i].0).collect();
    let mut sql = format!("INSERT INTO {} ({}) VALUES ", table.name, names.join(", "));
    let mut parameter = 0;
    for (row_index, _) in pending.iter().enumerate() {
        if row_index > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns.len() {
            if column > 0 {
                sql.push_str(", ");
            }
            parameter += 1;
            sql.push_str(&format!("${parameter}"));
        }
        sql.push(')');
    }
    let mut query = sqlx::query(&sql);
    for row in pending.iter() {
        for (value, (_, kind)) in row.iter().zip(columns) {
            query = match kind {
                Int => query.bind(value.as_i64()),
                Text => query.bind(value.as_str().map(str::to_owned)),
            };
        }
    }
    query.execute(&mut **transaction).await?;
    pending.clear();
    Ok(())
}
