//! Restoring a backup: the file checked line by line while it is loaded, in one transaction.

use std::io::BufRead;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::tables::{Kind, Table, TABLES};
use super::{invalid, BackupError, BackupSummary, FORMAT, FORMAT_VERSION, VALUES_PER_INSERT};
use crate::migrate::hex;
use crate::{Database, Dialect, MIGRATIONS};

use Kind::{Int, Text};

impl Database {
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
