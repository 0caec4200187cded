#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The probes on a real database (SQLite and PostgreSQL): the round trip, and failed logins of
//! the last minute counted from the audit table as `sekisho-auth` writes it.

use std::time::Duration;

use sekisho_db::testing::TestDatabase;
use sekisho_db::{now_millis, Dialect};
use sekisho_monitor::probes;

async fn failed_logins_of_the_last_minute_are_counted(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let database = test.open().await.unwrap();
    database.migrate().await.unwrap();
    assert_eq!(
        probes::login_failures_per_minute(&database).await,
        Some(0.0)
    );
    let now = now_millis();
    for (event, at) in [
        ("authn_login_fail", now - 1_000),
        ("authn_login_fail", now - 30_000),
        ("authn_login_fail", now - 120_000),
        ("authn_login_success", now - 1_000),
    ] {
        sekisho_db::sqlx::query(
            "INSERT INTO audit_log (at, event, username, client_ip, detail) VALUES ($1, $2, 'ann', '127.0.0.1', '')",
        )
        .bind(at)
        .bind(event)
        .execute(database.pool())
        .await
        .unwrap();
    }
    assert_eq!(
        probes::login_failures_per_minute(&database).await,
        Some(2.0)
    );
    let rtt = probes::database_rtt(&database, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(rtt > 0.0 && rtt < 5.0, "{rtt}");
    database.close().await;
    test.remove().await.unwrap();
}

#[tokio::test]
async fn sqlite_failed_logins_of_the_last_minute_are_counted() {
    failed_logins_of_the_last_minute_are_counted(Dialect::Sqlite).await;
}

#[tokio::test]
async fn postgres_failed_logins_of_the_last_minute_are_counted() {
    failed_logins_of_the_last_minute_are_counted(Dialect::Postgres).await;
}
