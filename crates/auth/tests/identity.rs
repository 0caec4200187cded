//! The identity store, sessions and logins on real SQLite, real PostgreSQL and real Redis: the
//! same suite on each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use sekisho_auth::{Auth, AuthError, UserUpdate};
use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Setup {
    auth: Arc<Auth>,
    database: TestDatabase,
    /// With Redis: its URL and this test's key prefix, removed at the end.
    redis: Option<(String, String)>,
}

/// Deletes every key of `url` starting with `prefix`.
async fn remove_keys(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

async fn setup(dialect: Dialect, redis_sessions: bool, extra: &str) -> Setup {
    let database = TestDatabase::new(dialect).await.unwrap();
    let mut store = database.store_toml();
    let mut sessions = String::new();
    let mut redis = None;
    if redis_sessions {
        let url = std::env::var("SEKISHO_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!("sekisho:test:auth:{:016x}:", fastrand::u64(..));
        store.push_str(&format!("redis = \"{url}\"\n"));
        sessions.push_str(&format!(
            "session_store = \"redis\"\nredis_prefix = \"{prefix}\"\n"
        ));
        redis = Some((url, prefix));
    }
    let source = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{store}\n[auth]\n{sessions}argon2 = {{ memory_kib = 64, iterations = 1, parallelism = 1 }}\n{extra}\n"
    );
    let config = sekisho_config::parse(&source, "test.toml").unwrap();
    let auth = Arc::new(Auth::open(&config, None).await.unwrap());
    auth.put_role("clerk", &["orders:read".into(), "orders:write".into()])
        .await
        .unwrap();
    auth.put_role("auditor", &["orders:read".into()])
        .await
        .unwrap();
    Setup {
        auth,
        database,
        redis,
    }
}

impl Setup {
    async fn finish(self) {
        self.auth.flush().await;
        let Setup {
            auth,
            database,
            redis,
        } = self;
        auth.directory().database().close().await;
        if let Some((url, prefix)) = redis {
            remove_keys(&url, &prefix).await;
        }
        database.remove().await.unwrap();
    }
}

async fn login_me_refresh_reuse_logout(dialect: Dialect, redis: bool) {
    let setup = setup(dialect, redis, "").await;
    let auth = &setup.auth;
    auth.create_user(
        "ann",
        Some("correct horse"),
        None,
        &["clerk".into(), "auditor".into()],
    )
    .await
    .unwrap();
    // One query: roles and the union of their permissions.
    let ann = auth.user("ann").await.unwrap();
    assert_eq!(ann.roles, ["auditor", "clerk"]);
    assert_eq!(ann.permissions, ["orders:read", "orders:write"]);
    assert_eq!(ann.password_scheme, "argon2id");

    let wrong = auth.login("ann", "wrong", CLIENT).await.unwrap_err();
    let unknown = auth.login("nobody", "wrong", CLIENT).await.unwrap_err();
    assert_eq!(wrong.to_string(), unknown.to_string());
    assert!(matches!(wrong, AuthError::Unauthenticated(_)));

    let login = auth.login("ann", "correct horse", CLIENT).await.unwrap();
    assert_eq!(login.token_type, "Bearer");
    assert_eq!(login.expires_in, 300);
    assert_eq!(login.access_token.len(), 64);
    assert_eq!(login.user.username, "ann");
    let me = auth.authenticate(&login.access_token).await.unwrap();
    assert_eq!(me.permissions, ["orders:read", "orders:write"]);
    assert!(auth.authenticate(&login.refresh_token).await.is_err());

    let refreshed = auth.refresh(&login.refresh_token, CLIENT).await.unwrap();
    assert_ne!(refreshed.refresh_token, login.refresh_token);
    assert!(auth.authenticate(&refreshed.access_token).await.is_ok());
    assert!(
        auth.authenticate(&login.access_token).await.is_err(),
        "the old access token went with the rotation"
    );
    // The spent refresh token again: refused, and the whole family is revoked.
    assert!(matches!(
        auth.refresh(&login.refresh_token, CLIENT).await,
        Err(AuthError::Unauthenticated(_))
    ));
    assert!(auth.authenticate(&refreshed.access_token).await.is_err());
    assert!(auth
        .refresh(&refreshed.refresh_token, CLIENT)
        .await
        .is_err());

    let second = auth.login("ann", "correct horse", CLIENT).await.unwrap();
    assert_eq!(auth.sessions_of("ann").await.unwrap().len(), 1);
    auth.authenticate(&second.access_token).await.unwrap();
    auth.logout(&second.access_token, CLIENT).await.unwrap();
    assert!(auth.authenticate(&second.access_token).await.is_err());
    assert!(auth.logout(&second.access_token, CLIENT).await.is_err());

    auth.flush().await;
    let events: Vec<String> = auth
        .directory()
        .audit_events(50)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, event, _)| event)
        .collect();
    for expected in [
        "user_created",
        "authn_login_fail",
        "authn_login_success",
        "authn_token_reuse",
        "authn_logout",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} in {events:?}"
        );
    }
    assert!(auth.user("ann").await.unwrap().last_login_at.is_some());
    setup.finish().await;
}

async fn legacy_hashes_are_rehashed_and_lockout_ends(dialect: Dialect) {
    let setup = setup(
        dialect,
        false,
        "lockout = { max_failures = 3, window = \"1m\", duration = \"300ms\" }",
    )
    .await;
    let auth = &setup.auth;
    let md5 = "5f4dcc3b5aa765d61d8327deb882cf99"; // MD5("password")
    auth.create_user("old", None, Some(md5), &[]).await.unwrap();
    let bcrypt = bcrypt::hash("password", 4).unwrap();
    auth.create_user("older", None, Some(&bcrypt), &["auditor".into()])
        .await
        .unwrap();
    assert_eq!(auth.user("old").await.unwrap().password_scheme, "md5");
    assert_eq!(auth.user("older").await.unwrap().password_scheme, "bcrypt");
    for name in ["old", "older"] {
        auth.login(name, "password", CLIENT).await.unwrap();
        let stored = auth
            .directory()
            .user_by_name(name)
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        assert!(stored.starts_with("$argon2id$"), "{name}: {stored}");
        auth.login(name, "password", CLIENT).await.unwrap();
    }

    // Three failures lock the account; the right password is refused while locked.
    let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    for _ in 0..3 {
        assert!(matches!(
            auth.login("old", "nope", other).await,
            Err(AuthError::Unauthenticated(_))
        ));
    }
    let Err(AuthError::Locked { retry_after }) = auth.login("old", "password", CLIENT).await else {
        panic!("not locked");
    };
    assert!(retry_after <= std::time::Duration::from_millis(300));
    auth.flush().await;
    assert!(auth.user("old").await.unwrap().locked_until.is_some());
    // The lockout is a time: wait it out, then the right password works again.
    tokio::time::sleep(retry_after).await;
    auth.login("old", "password", CLIENT).await.unwrap();

    // An operator's unlock.
    for _ in 0..3 {
        let _ = auth.login("older", "nope", CLIENT).await;
    }
    assert!(matches!(
        auth.login("older", "password", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)))
            .await,
        Err(AuthError::Locked { .. })
    ));
    auth.update_user(
        "older",
        UserUpdate {
            unlock: true,
            disabled: Some(true),
            ..UserUpdate::default()
        },
    )
    .await
    .unwrap();
    // Disabled: the same refusal as a wrong password.
    assert!(matches!(
        auth.login("older", "password", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)))
            .await,
        Err(AuthError::Unauthenticated(_))
    ));
    setup.finish().await;
}

#[tokio::test]
async fn sqlite_login_me_refresh_reuse_logout() {
    login_me_refresh_reuse_logout(Dialect::Sqlite, false).await;
}

#[tokio::test]
async fn postgres_login_me_refresh_reuse_logout() {
    login_me_refresh_reuse_logout(Dialect::Postgres, false).await;
}

#[tokio::test]
async fn redis_sessions_login_me_refresh_reuse_logout() {
    login_me_refresh_reuse_logout(Dialect::Sqlite, true).await;
}

#[tokio::test]
async fn sqlite_legacy_hashes_are_rehashed_and_lockout_ends() {
    legacy_hashes_are_rehashed_and_lockout_ends(Dialect::Sqlite).await;
}

#[tokio::test]
async fn postgres_legacy_hashes_are_rehashed_and_lockout_ends() {
    legacy_hashes_are_rehashed_and_lockout_ends(Dialect::Postgres).await;
}

/// The admin API's list of users, a page at a time by name (issue 17).
async fn users_come_a_page_at_a_time_by_name(dialect: Dialect) {
    let setup = setup(dialect, false, "").await;
    let auth = &setup.auth;
    for name in ["cy", "ann", "bo"] {
        auth.create_user(name, Some("correct horse battery"), None, &[])
            .await
            .unwrap();
    }
    let names = |page: Vec<sekisho_auth::UserView>| -> Vec<String> {
        page.into_iter().map(|user| user.username).collect()
    };
    assert_eq!(
        names(auth.users_page(None, 2).await.unwrap()),
        ["ann", "bo"]
    );
    assert_eq!(names(auth.users_page(Some("bo"), 2).await.unwrap()), ["cy"]);
    assert!(auth.users_page(Some("cy"), 2).await.unwrap().is_empty());
    assert_eq!(
        names(auth.users_page(None, 100).await.unwrap()),
        names(auth.users().await.unwrap())
    );
    setup.finish().await;
}

#[tokio::test]
async fn sqlite_users_come_a_page_at_a_time_by_name() {
    users_come_a_page_at_a_time_by_name(Dialect::Sqlite).await;
}

#[tokio::test]
async fn postgres_users_come_a_page_at_a_time_by_name() {
    users_come_a_page_at_a_time_by_name(Dialect::Postgres).await;
}
