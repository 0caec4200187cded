//! The auth work a login need not wait for (audit rows, last logins) on the durable task queue,
//! through the real binary (issue 16, item 5): a login is answered once its audit event is a
//! stored task, so a gateway killed with SIGKILL right after loses none of it even when the
//! audit table could not be written at the time — the restarted gateway applies the tasks, each
//! exactly once. And at a graceful stop, the tasks already stored are applied before the exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{add_user, binary, login};
use sekisho_db::testing::TestDatabase;
use sekisho_db::{Database, Dialect};
use sekisho_testkit::{Origin, Reply, Sekisho, TempDir};

fn config(store: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         {store}\n\
         [auth]\nargon2 = {{ memory_kib = 64, iterations = 1, parallelism = 1 }}\n\
         [upstreams.app]\ntargets = [\"{upstream}\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n"
    )
}

/// How many audit rows of `event` for `user` there are.
async fn audit_rows(database: &Database, event: &str, user: &str) -> i64 {
    sekisho_db::sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE event = $1 AND username = $2",
    )
    .bind(event)
    .bind(user)
    .fetch_one(database.pool())
    .await
    .unwrap()
}

/// Waits (≤ 20 s, polling: rows of a database, no event to await) until both of ann's login
/// events are in the audit table.
async fn wait_for_both_events(database: &Database, gateway: &Sekisho) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while audit_rows(database, "authn_login_success", "ann").await == 0
        || audit_rows(database, "authn_login_fail", "ann").await == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit events were lost\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each event exactly once, the last login recorded, and the tasks finished in the queue.
async fn assert_applied_once(database: &Database, gateway: &Sekisho) {
    assert_eq!(
        audit_rows(database, "authn_login_success", "ann").await,
        1,
        "{}",
        gateway.log()
    );
    assert_eq!(audit_rows(database, "authn_login_fail", "ann").await, 1);
    let last_login: Option<i64> =
        sekisho_db::sqlx::query_scalar("SELECT last_login_at FROM users WHERE username = 'ann'")
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert!(last_login.is_some(), "{}", gateway.log());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pending: i64 = sekisho_db::sqlx::query_scalar(
            "SELECT COUNT(*) FROM notifications WHERE channel = 'task' AND state <> 'delivered'",
        )
        .fetch_one(database.pool())
        .await
        .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tasks left: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kinds: Vec<String> = sekisho_db::sqlx::query_scalar(
        "SELECT DISTINCT group_key FROM notifications WHERE channel = 'task' ORDER BY group_key",
    )
    .fetch_all(database.pool())
    .await
    .unwrap();
    assert_eq!(kinds, vec!["audit".to_owned(), "last_login".to_owned()]);
}

/// On PostgreSQL the audit table is locked by another session while ann logs in (and fails
/// once): both answers come at once, the gateway is killed, the lock goes, and the restarted
/// gateway applies what the killed one had only stored. Without the queue the rows were held
/// in the killed process's memory and are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_login_answered_before_a_kill_keeps_its_audit_events() {
    let origin = Origin::start(|_, _| Reply::new(200, "ok")).await;
    let database = TestDatabase::new(Dialect::Postgres).await.unwrap();
    let dir = TempDir::new("auth-tasks-pg");
    let path = dir.write(
        "sekisho.toml",
        &config(&database.store_toml(), origin.address),
    );
    let path_text = path.to_str().unwrap();
    add_user(path_text, "ann", None, "correct horse");
    let db = database.open().await.unwrap();
    let mut gateway = Sekisho::start(&binary(), &path);

    let mut lock = db.pool().begin().await.unwrap();
    sekisho_db::sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    assert_eq!(login(&gateway, "ann", "wrong").await, 401);
    assert_eq!(login(&gateway, "ann", "correct horse").await, 200);
    gateway.kill();
    lock.rollback().await.unwrap();

    let gateway = Sekisho::start(&binary(), &path);
    wait_for_both_events(&db, &gateway).await;
    assert_applied_once(&db, &gateway).await;
    db.close().await;
    drop(gateway);
    database.remove().await.unwrap();
}

/// On SQLite: killed right after the answers, restarted, the events are there once each; and a
/// graceful stop applies the stored tasks before the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_login_events_survive_a_kill_and_are_applied_before_a_graceful_exit() {
    let origin = Origin::start(|_, _| Reply::new(200, "ok")).await;
    let dir = TempDir::new("auth-tasks-sqlite");
    let path = dir.write(
        "sekisho.toml",
        &config("[store]\ndata_dir = \"data\"\n", origin.address),
    );
    add_user(path.to_str().unwrap(), "ann", None, "correct horse");
    let file = dir.path().join("data").join("sekisho.db");
    let url = format!("sqlite://{}", file.display());

    let mut gateway = Sekisho::start(&binary(), &path);
    assert_eq!(login(&gateway, "ann", "wrong").await, 401);
    assert_eq!(login(&gateway, "ann", "correct horse").await, 200);
    gateway.kill();
    let mut gateway = Sekisho::start(&binary(), &path);
    let db = Database::connect(&url, 1).await.unwrap();
    wait_for_both_events(&db, &gateway).await;
    assert_applied_once(&db, &gateway).await;
    db.close().await;

    // A graceful stop right after a login: its tasks are applied, not left for the next start.
    assert_eq!(login(&gateway, "ann", "correct horse").await, 200);
    gateway.signal("TERM");
    assert_eq!(
        gateway.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gateway.log()
    );
    let db = Database::connect(&url, 1).await.unwrap();
    assert_eq!(audit_rows(&db, "authn_login_success", "ann").await, 2);
    let left: i64 = sekisho_db::sqlx::query_scalar(
        "SELECT COUNT(*) FROM notifications WHERE channel = 'task' AND state = 'pending'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(left, 0, "{}", gateway.log());
    db.close().await;
}
