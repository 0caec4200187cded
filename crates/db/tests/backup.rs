#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Backup and restore on real SQLite and real PostgreSQL: the backup covers every table and
//! column of the migrated schema, a backup of one engine restores into the other and back to
//! the same rows (ids, NULLs, quotes, newlines and non-ASCII text included), the sequences go on
//! after the restored ids, a damaged, truncated or foreign file replaces nothing, and
//! `backup_age` counts from the last recorded backup.

use sekisho_db::sqlx::{self, Row};
use sekisho_db::testing::TestDatabase;
use sekisho_db::{backup_columns, backup_tables, BackupError, Database, Dialect};

/// Every table of the migrated schema and its columns, as the engine lists them.
async fn schema(database: &Database) -> Vec<(String, Vec<String>)> {
    let tables: Vec<String> = match database.dialect() {
        Dialect::Sqlite => sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        ),
        Dialect::Postgres => sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
        ),
    }
    .fetch_all(database.pool())
    .await
    .unwrap();
    let mut out = Vec::new();
    for table in tables.into_iter().filter(|t| t != "schema_migrations") {
        let columns: Vec<String> = match database.dialect() {
            Dialect::Sqlite => sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid"),
            Dialect::Postgres => sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
            ),
        }
        .bind(&table)
        .fetch_all(database.pool())
        .await
        .unwrap();
        out.push((table, columns));
    }
    out
}

async fn the_backup_covers_every_table_and_column(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let database = test.open().await.unwrap();
    database.migrate().await.unwrap();
    let mut listed: Vec<(String, Vec<String>)> = backup_tables()
        .into_iter()
        .map(|t| {
            let columns = backup_columns(t).unwrap();
            (
                t.to_owned(),
                columns.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        schema(&database).await,
        "backup.rs's TABLES against the schema"
    );
    database.close().await;
    test.remove().await.unwrap();
}

#[tokio::test]
async fn sqlite_the_backup_covers_every_table_and_column() {
    the_backup_covers_every_table_and_column(Dialect::Sqlite).await;
}

#[tokio::test]
async fn postgres_the_backup_covers_every_table_and_column() {
    the_backup_covers_every_table_and_column(Dialect::Postgres).await;
}

/// Rows in several tables, with NULLs and awkward text.
async fn fill(database: &Database) {
    let pool = database.pool();
    for (name, hash) in [("ann", "$argon2id$v=19$x"), ("bō \"quoted\"\nline", "5f4d")] {
        sqlx::query("INSERT INTO users (username, password_hash, created_at, updated_at, last_login_at) VALUES ($1, $2, 1, 2, NULL)")
            .bind(name)
            .bind(hash)
            .execute(pool)
            .await
            .unwrap();
    }
    // A gap in the ids: a deleted user.
    sqlx::query("INSERT INTO users (username, password_hash, created_at, updated_at) VALUES ('gone', 'x', 1, 1)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM users WHERE username = 'gone'")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO roles (name, created_at) VALUES ('clerk', 5)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO user_roles (user_id, role_id) SELECT u.id, r.id FROM users u, roles r WHERE u.username = 'ann'")
        .execute(pool)
        .await
        .unwrap();
    for i in 0..700_i64 {
        // More rows than one INSERT of the restore takes.
        sqlx::query("INSERT INTO audit_log (at, event, username, client_ip, detail) VALUES ($1, 'authn_login_fail', $2, NULL, $3)")
            .bind(i)
            .bind(format!("user{i}"))
            .bind(format!("{{\"n\":{i}}}"))
            .execute(pool)
            .await
            .unwrap();
    }
}

/// The rows of a backup: everything between its header and its trailer.
fn rows_of(backup: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(backup).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines[1..lines.len() - 1]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

async fn count(database: &Database, table: &str) -> i64 {
    sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(database.pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

async fn a_backup_restores_into_the_other_engine_and_back(from: Dialect, to: Dialect) {
    let source_test = TestDatabase::new(from).await.unwrap();
    let source = source_test.open().await.unwrap();
    source.migrate().await.unwrap();
    fill(&source).await;
    let mut first = Vec::new();
    let summary = source.backup(&mut first).await.unwrap();
    assert_eq!(summary.bytes, first.len() as u64);
    assert_eq!(summary.total_rows(), 2 + 1 + 1 + 700);

    // The target already holds something else: the restore replaces it.
    let target_test = TestDatabase::new(to).await.unwrap();
    let target = target_test.open().await.unwrap();
    target.migrate().await.unwrap();
    sqlx::query("INSERT INTO users (username, password_hash, created_at, updated_at) VALUES ('stranger', 'x', 1, 1)")
        .execute(target.pool())
        .await
        .unwrap();
    let restored = target.restore(first.as_slice()).await.unwrap();
    assert_eq!(restored.rows, summary.rows);
    assert_eq!(restored.sha256, summary.sha256);
    assert_eq!(count(&target, "users").await, 2);

    let mut second = Vec::new();
    target.backup(&mut second).await.unwrap();
    assert_eq!(
        rows_of(&first),
        rows_of(&second),
        "the same rows after the round trip"
    );

    // New rows get ids after the restored ones (PostgreSQL's sequences were moved on).
    let id: i64 = sqlx::query_scalar("INSERT INTO users (username, password_hash, created_at, updated_at) VALUES ('new', 'x', 1, 1) RETURNING id")
        .fetch_one(target.pool())
        .await
        .unwrap();
    let max_restored: i64 = sqlx::query_scalar("SELECT MAX(id) FROM users WHERE username <> 'new'")
        .fetch_one(target.pool())
        .await
        .unwrap();
    assert!(id > max_restored, "{id} after {max_restored}");

    source.close().await;
    target.close().await;
    source_test.remove().await.unwrap();
    target_test.remove().await.unwrap();
}

#[tokio::test]
async fn a_sqlite_backup_restores_into_postgres_and_back() {
    a_backup_restores_into_the_other_engine_and_back(Dialect::Sqlite, Dialect::Postgres).await;
}

#[tokio::test]
async fn a_postgres_backup_restores_into_sqlite_and_back() {
    a_backup_restores_into_the_other_engine_and_back(Dialect::Postgres, Dialect::Sqlite).await;
}

async fn a_bad_file_replaces_nothing(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let database = test.open().await.unwrap();
    database.migrate().await.unwrap();
    fill(&database).await;
    let mut good = Vec::new();
    database.backup(&mut good).await.unwrap();
    let text = String::from_utf8(good.clone()).unwrap();

    let altered = text.replacen("\"ann\"", "\"anne\"", 1);
    let truncated: String = {
        let lines: Vec<&str> = text.lines().collect();
        lines[..lines.len() - 1].join("\n") + "\n"
    };
    let newer = text.replacen(
        "\"migrations\":[",
        "\"migrations\":[{\"version\":999,\"name\":\"future\",\"checksum\":\"00\"},",
        1,
    );
    let changed = text.replacen("\"checksum\":\"", "\"checksum\":\"0", 1);
    let wrong_row = text.replacen("[1,\"ann\"", "[\"one\",\"ann\"", 1);
    assert_ne!(wrong_row, text);
    let cases = [
        (altered.as_str(), "checksum differs"),
        (truncated.as_str(), "truncated"),
        (newer.as_str(), "newer sekisho"),
        (changed.as_str(), "another build"),
        (wrong_row.as_str(), "does not fit"),
        ("", "empty"),
        ("{\"hello\":1}\n", "not a sekisho backup"),
    ];
    for (file, expected) in cases {
        let error = database.restore(file.as_bytes()).await.unwrap_err();
        assert!(
            matches!(error, BackupError::Invalid { .. }),
            "{expected}: {error}"
        );
        assert!(error.to_string().contains(expected), "{expected}: {error}");
        assert_eq!(count(&database, "users").await, 2, "after {expected}");
        assert_eq!(count(&database, "audit_log").await, 700, "after {expected}");
    }
    // And the good one still restores.
    database.restore(good.as_slice()).await.unwrap();
    database.close().await;
    test.remove().await.unwrap();
}

#[tokio::test]
async fn sqlite_a_bad_file_replaces_nothing() {
    a_bad_file_replaces_nothing(Dialect::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_bad_file_replaces_nothing() {
    a_bad_file_replaces_nothing(Dialect::Postgres).await;
}

#[tokio::test]
async fn backup_age_counts_from_the_last_recorded_backup_or_the_store_s_birth() {
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let database = test.open().await.unwrap();
    database.migrate().await.unwrap();
    // Never backed up: the age of the store, taken as made a day ago here.
    sqlx::query("UPDATE schema_migrations SET applied_at = applied_at - 86400000")
        .execute(database.pool())
        .await
        .unwrap();
    let unbacked = database.backup_age().await.unwrap();
    assert!((86_400.0..86_500.0).contains(&unbacked), "{unbacked}");
    let mut file = Vec::new();
    let summary = database.backup(&mut file).await.unwrap();
    // Taking a backup is not enough: it counts once it reached its destination.
    assert!(database.backup_age().await.unwrap() >= 86_400.0);
    database
        .record_backup("/backups/a.jsonl", &summary)
        .await
        .unwrap();
    let fresh = database.backup_age().await.unwrap();
    assert!(fresh < 60.0, "{fresh}");
    let recorded: (String, i64) = sqlx::query_as("SELECT destination, rows_copied FROM backups")
        .fetch_one(database.pool())
        .await
        .unwrap();
    assert_eq!(recorded, ("/backups/a.jsonl".to_owned(), 0));
    database.close().await;
    test.remove().await.unwrap();
}

#[tokio::test]
async fn a_file_that_is_not_a_backup_leaves_a_fresh_database_untouched() {
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let database = test.open().await.unwrap();
    let error = database.restore(&b"{\"x\":1}\n"[..]).await.unwrap_err();
    assert!(
        error.to_string().contains("not a sekisho backup"),
        "{error}"
    );
    let applied = database.status().await.unwrap();
    assert!(
        applied.iter().all(|m| m.applied_at.is_none()),
        "{applied:?}"
    );
    database.close().await;
    test.remove().await.unwrap();
}

#[tokio::test]
async fn a_database_behind_this_sekisho_s_schema_is_not_backed_up() {
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let database = test.open().await.unwrap();
    let error = database.backup(Vec::new()).await.unwrap_err();
    assert!(error.to_string().contains("sekisho migrate"), "{error}");
    database.close().await;
    test.remove().await.unwrap();
}
