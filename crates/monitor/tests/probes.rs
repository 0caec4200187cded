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

/// A certificate expiring at `year-month-day` 00:00 UTC, as a PEM file.
fn certificate_until(dir: &std::path::Path, year: i32, month: u8, day: u8) -> std::path::PathBuf {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    let path = dir.join(format!("{year}.pem"));
    std::fs::write(&path, pem).unwrap();
    path
}

#[test]
fn the_days_left_on_a_certificate_are_read_from_its_pem_file() {
    let dir = std::env::temp_dir().join(format!(
        "sekisho_tls_expiry_{}_{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // 2031-06-01 is written as UTCTime, 2051-01-01 as GeneralizedTime (RFC 5280).
    let utc_time = certificate_until(&dir, 2031, 6, 1);
    let generalized = certificate_until(&dir, 2051, 1, 1);
    let may_2031 = 1_935_446_400; // 2031-05-02T00:00:00Z
    assert_eq!(probes::tls_expiry_days(&utc_time, may_2031), Some(30.0));
    assert_eq!(
        probes::tls_expiry_days(&utc_time, may_2031 + 40 * 86_400),
        Some(-10.0)
    );
    let new_year_2051 = 2_556_144_000; // 2051-01-01T00:00:00Z
    assert_eq!(
        probes::tls_expiry_days(&generalized, new_year_2051 - 7 * 86_400),
        Some(7.0)
    );
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    assert_eq!(probes::tls_expiry_days(&dir.join("junk.pem"), 0), None);
    assert_eq!(probes::tls_expiry_days(&dir.join("missing.pem"), 0), None);
    let _ = std::fs::remove_dir_all(dir);
}
