#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Migrations on real SQLite and real PostgreSQL: applied once, recorded with their checksum,
//! and a changed applied migration refuses the start.

use sekisho_db::testing::TestDatabase;
use sekisho_db::{DbError, Dialect, MIGRATIONS};

async fn migrations_apply_once_and_a_changed_checksum_refuses(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let database = test.open().await.unwrap();
    let before = database.status().await.unwrap();
    assert!(before.iter().all(|m| m.applied_at.is_none()), "{before:?}");
    let applied = database.migrate().await.unwrap();
    assert_eq!(
        applied,
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    assert!(
        database.migrate().await.unwrap().is_empty(),
        "applied twice"
    );
    let after = database.status().await.unwrap();
    assert!(
        after.iter().all(|m| m.applied_at.is_some() && !m.changed),
        "{after:?}"
    );
    assert_eq!(after[0].checksum, MIGRATIONS[0].checksum());
    assert_eq!(after[0].checksum.len(), 64);
    // The tables are there.
    sekisho_db::sqlx::query("SELECT COUNT(*) FROM users")
        .fetch_one(database.pool())
        .await
        .unwrap();
    sekisho_db::sqlx::query("SELECT COUNT(*) FROM notifications")
        .fetch_one(database.pool())
        .await
        .unwrap();

    sekisho_db::sqlx::query("UPDATE schema_migrations SET checksum = $1 WHERE version = 1")
        .bind("0".repeat(64))
        .execute(database.pool())
        .await
        .unwrap();
    let error = database.migrate().await.unwrap_err();
    assert!(
        matches!(error, DbError::ChecksumMismatch { version: 1, .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("migration 1 (identity)"), "{message}");
    assert!(message.contains("refusing to start"), "{message}");
    assert!(database.status().await.unwrap()[0].changed);
    database.close().await;
    test.remove().await.unwrap();
}

#[tokio::test]
async fn sqlite_migrations_apply_once_and_a_changed_checksum_refuses() {
    migrations_apply_once_and_a_changed_checksum_refuses(Dialect::Sqlite).await;
}

#[tokio::test]
async fn postgres_migrations_apply_once_and_a_changed_checksum_refuses() {
    migrations_apply_once_and_a_changed_checksum_refuses(Dialect::Postgres).await;
}
