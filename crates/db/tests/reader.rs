#![allow(clippy::unwrap_used, clippy::expect_used)]
//! SQLite's readers beside its one writer: a read on `Database::reader` does not wait for the
//! writer's connection, which a background write (or one blocked on another process's lock)
//! may hold for seconds — the request path's reads (sessions, identities) go there. And the
//! readers cannot write.

use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_does_not_wait_for_the_writers_connection() {
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let database = test.open().await.unwrap();
    database.migrate().await.unwrap();
    sekisho_db::sqlx::query("INSERT INTO roles (name, created_at) VALUES ('reader-test', 0)")
        .execute(database.pool())
        .await
        .unwrap();

    // The writer's one connection is taken, in the middle of a write transaction.
    let mut writer = database.pool().acquire().await.unwrap();
    sekisho_db::sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *writer)
        .await
        .unwrap();
    sekisho_db::sqlx::query("INSERT INTO roles (name, created_at) VALUES ('not-yet', 0)")
        .execute(&mut *writer)
        .await
        .unwrap();

    // A reader sees what was committed, at once (through the writer's pool this would wait
    // for the connection until the pool's acquire timeout and fail).
    let names: Vec<String> = sekisho_db::sqlx::query_scalar("SELECT name FROM roles ORDER BY name")
        .fetch_all(database.reader())
        .await
        .unwrap();
    assert!(names.contains(&"reader-test".to_owned()), "{names:?}");
    assert!(!names.contains(&"not-yet".to_owned()), "{names:?}");

    // Readers are read-only.
    let refused =
        sekisho_db::sqlx::query("INSERT INTO roles (name, created_at) VALUES ('sneaky', 0)")
            .execute(database.reader())
            .await;
    assert!(refused.is_err(), "a reader wrote");

    sekisho_db::sqlx::query("COMMIT")
        .execute(&mut *writer)
        .await
        .unwrap();
    drop(writer);
    database.close().await;
}
