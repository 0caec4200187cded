//! Edge authentication through the real binary, on real SQLite and real PostgreSQL (the same
//! suite on both) and real Redis: users made with the CLI, login → me → protected route →
//! logout, refresh rotation and reuse, legacy hashes rehashed, lockout and its end, identity
//! headers a client forges, two gateways sharing sessions through Redis, a changed applied
//! migration, and a login flood beyond the hashing queue.
// The helpers outside the #[test] functions fail their test as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

mod common;

use bytes::Bytes;
use common::{add_role, add_user, binary, cli, cli_ok};
use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;
use sekisho_testkit::{client, promtool, send, Origin, Reply, Sekisho, TempDir};

fn shared_redis() -> String {
    std::env::var("SEKISHO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// An upstream that answers every request with the identity headers it received, as JSON.
async fn echo_origin() -> Origin {
    Origin::start(|head, _| {
        let seen = |name: &str| {
            head.headers
                .get(name)
                .map(|v| v.to_str().unwrap_or("?").to_owned())
        };
        let body = serde_json::json!({
            "path": head.uri.path(),
            "user_id": seen("x-auth-user-id"),
            "user": seen("x-auth-user"),
            "roles": seen("x-auth-roles"),
            "permissions": seen("x-auth-permissions"),
        });
        Reply::new(200, body.to_string()).header("content-type", "application/json")
    })
    .await
}

/// A config with `[auth]` (small argon2 parameters: fast tests) and three routes in front of
/// `upstream`: `/api/orders` needs `orders:write`, `/admin` the role `admin`, `/open` nothing.
fn config(store: &str, upstream: &str, auth_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         {store}\n\
         [auth]\nargon2 = {{ memory_kib = 64, iterations = 1, parallelism = 1 }}\n{auth_extra}\n\
         [upstreams.app]\ntargets = [\"{upstream}\"]\n\
         [[routes]]\nname = \"orders\"\npath_prefix = \"/api/orders\"\nupstream = \"app\"\nauth = {{ permission = \"orders:write\" }}\n\
         [[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"app\"\nauth = {{ role = \"admin\" }}\n\
         [[routes]]\nname = \"open\"\npath_prefix = \"/open\"\nupstream = \"app\"\n\
         [[routes]]\nname = \"cached\"\npath_prefix = \"/cached\"\nupstream = \"app\"\nauth = \"authenticated\"\n\
         [routes.cache]\nttl = \"60s\"\n"
    )
}

/// Roles and users of the suite, made with the CLI.
fn seed(config: &Path) {
    let config = config.to_str().unwrap();
    add_role(config, "clerk", &["orders:write", "orders:read"]);
    add_role(config, "admin", &["users:manage"]);
    add_user(config, "ann", Some("clerk"), "correct horse");
    // MD5("password"), as the seed's service stored it; and a bcrypt hash of "password".
    cli_ok(
        &[
            "user",
            "add",
            "--config",
            config,
            "md5user",
            "--role",
            "clerk",
            "--password-hash",
            "5f4dcc3b5aa765d61d8327deb882cf99",
        ],
        "",
    );
    let bcrypt = bcrypt::hash("password", 4).unwrap();
    cli_ok(
        &[
            "user",
            "add",
            "--config",
            config,
            "bcryptuser",
            "--password-hash",
            &bcrypt,
        ],
        "",
    );
}

async fn login(gateway: &Sekisho, user: &str, password: &str) -> sekisho_testkit::Answer {
    login_from(gateway, user, password, "10.0.0.1").await
}

/// A login from `address` (the gateway trusts the loopback proxy's `X-Forwarded-For`).
async fn login_from(
    gateway: &Sekisho,
    user: &str,
    password: &str,
    address: &str,
) -> sekisho_testkit::Answer {
    let body = serde_json::json!({ "username": user, "password": password }).to_string();
    send(
        &client(),
        "POST",
        &gateway.url("/auth/login"),
        &[
            ("content-type", "application/json"),
            ("x-forwarded-for", address),
        ],
        body,
    )
    .await
}

async fn with_token(
    gateway: &Sekisho,
    method: &str,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> sekisho_testkit::Answer {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    send(
        &client(),
        method,
        &gateway.url(path),
        &headers,
        Bytes::new(),
    )
    .await
}

async fn refresh(gateway: &Sekisho, token: &str) -> sekisho_testkit::Answer {
    let body = serde_json::json!({ "refresh_token": token }).to_string();
    send(&client(), "POST", &gateway.url("/auth/refresh"), &[], body).await
}

async fn the_whole_journey(dialect: Dialect) {
    let database = TestDatabase::new(dialect).await.unwrap();
    let origin = echo_origin().await;
    let dir = TempDir::new("auth");
    let config = dir.write(
        "auth.toml",
        &config(
            &database.store_toml(),
            &origin.address.to_string(),
            "lockout = { max_failures = 3, window = \"1m\", duration = \"1s\" }",
        ),
    );
    seed(&config);
    let gateway = Sekisho::start(&binary(), &config);

    // A wrong password and an unknown user: the same 401, the same message.
    let wrong = login(&gateway, "ann", "wrong").await;
    let unknown = login(&gateway, "nobody", "wrong").await;
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert_eq!(wrong.error_code(), "UNAUTHENTICATED");
    assert_eq!(
        wrong.json()["error"]["message"],
        unknown.json()["error"]["message"]
    );

    let answer = login(&gateway, "ann", "correct horse").await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let tokens = answer.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 300);
    assert_eq!(tokens["user"]["username"], "ann");
    assert_eq!(tokens["user"]["roles"], serde_json::json!(["clerk"]));
    assert_eq!(
        tokens["user"]["permissions"],
        serde_json::json!(["orders:read", "orders:write"])
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();

    let me = with_token(&gateway, "GET", "/auth/me", &access, &[]).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["username"], "ann");
    assert!(me.json()["id"].is_i64());

    // The protected route: no token 401, a token with the permission 200 with the identity
    // headers (the client's forged ones gone), a route asking for a role it lacks 403.
    let anonymous = send(
        &client(),
        "GET",
        &gateway.url("/api/orders/7"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.error_code(), "UNAUTHENTICATED");
    let forged = [
        ("x-auth-user", "root"),
        ("x-auth-roles", "admin"),
        ("X-Auth-User-Id", "0"),
    ];
    let allowed = with_token(&gateway, "GET", "/api/orders/7", &access, &forged).await;
    assert_eq!(allowed.status, 200);
    let seen = allowed.json();
    assert_eq!(seen["user"], "ann");
    assert_eq!(seen["roles"], "clerk");
    assert_eq!(seen["permissions"], "orders:read,orders:write");
    assert_eq!(seen["user_id"], me.json()["id"].to_string());
    // The same identity whichever way the request goes up: a body too large to hold whole
    // streams through hyper's client (the headers set in the request's map), and a route
    // with a cache keeps them in the map for its key (the others are written with the head).
    let bearer = format!("Bearer {access}");
    let mut streamed_headers = vec![("authorization", bearer.as_str())];
    streamed_headers.extend_from_slice(&forged);
    let streamed = send(
        &client(),
        "POST",
        &gateway.url("/api/orders/big"),
        &streamed_headers,
        vec![b'x'; 200 * 1024],
    )
    .await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.json()["user"], "ann");
    assert_eq!(streamed.json()["roles"], "clerk");
    let cached = with_token(&gateway, "GET", "/cached/me", &access, &forged).await;
    assert_eq!(cached.status, 200);
    assert_eq!(cached.json()["user"], "ann");
    assert_eq!(cached.json()["permissions"], "orders:read,orders:write");
    let forbidden = with_token(&gateway, "GET", "/admin/users", &access, &forged).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.error_code(), "FORBIDDEN");
    assert_eq!(origin.calls("/admin/users"), 0);
    // A route without `auth` never passes a client's identity headers on either.
    let open = send(
        &client(),
        "GET",
        &gateway.url("/open"),
        &forged,
        Bytes::new(),
    )
    .await;
    assert_eq!(open.status, 200);
    let seen = open.json();
    assert!(
        seen["user"].is_null() && seen["roles"].is_null() && seen["user_id"].is_null(),
        "{seen}"
    );
    let garbage = with_token(&gateway, "GET", "/api/orders/7", "not-a-token", &[]).await;
    assert_eq!(garbage.status, 401);

    // Refresh rotates; the spent refresh token presented again revokes the whole family.
    let rotated = refresh(&gateway, &refresh_token).await;
    assert_eq!(rotated.status, 200);
    let new_access = rotated.json()["access_token"].as_str().unwrap().to_owned();
    let new_refresh = rotated.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(new_refresh, refresh_token);
    assert_eq!(
        with_token(&gateway, "GET", "/auth/me", &new_access, &[])
            .await
            .status,
        200
    );
    let reused = refresh(&gateway, &refresh_token).await;
    assert_eq!(reused.status, 401);
    assert_eq!(reused.error_code(), "UNAUTHENTICATED");
    assert_eq!(
        with_token(&gateway, "GET", "/auth/me", &new_access, &[])
            .await
            .status,
        401
    );
    assert_eq!(refresh(&gateway, &new_refresh).await.status, 401);

    // Logout: 204, and the token is dead.
    let again = login(&gateway, "ann", "correct horse").await.json();
    let access = again["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        with_token(&gateway, "GET", "/api/orders", &access, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        with_token(&gateway, "POST", "/auth/logout", &access, &[])
            .await
            .status,
        204
    );
    assert_eq!(
        with_token(&gateway, "GET", "/api/orders", &access, &[])
            .await
            .status,
        401
    );
    assert_eq!(
        with_token(&gateway, "GET", "/auth/me", &access, &[])
            .await
            .status,
        401
    );

    // Legacy hashes: accepted once, stored as argon2id from then on.
    for user in ["md5user", "bcryptuser"] {
        assert_eq!(
            login(&gateway, user, "password").await.status,
            200,
            "{user}"
        );
        assert_eq!(
            login(&gateway, user, "password").await.status,
            200,
            "{user}"
        );
    }
    let listed = cli_ok(&["user", "list", "--config", config.to_str().unwrap()], "");
    for user in ["ann", "md5user", "bcryptuser"] {
        let line = listed.lines().find(|l| l.starts_with(user)).unwrap();
        assert!(line.contains("scheme=argon2id"), "{listed}");
    }

    // Lockout: the third failure locks the account and the address; even the right password
    // gets 429 with Retry-After, from anywhere, until the lockout ends.
    for _ in 0..3 {
        assert_eq!(
            login_from(&gateway, "md5user", "nope", "10.0.0.2")
                .await
                .status,
            401
        );
    }
    let locked = login_from(&gateway, "md5user", "password", "10.0.0.3").await;
    assert_eq!(locked.status, 429);
    assert_eq!(locked.error_code(), "RATE_LIMITED");
    let retry_after: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry_after, 1);
    let address_locked = login_from(&gateway, "ann", "correct horse", "10.0.0.2").await;
    assert_eq!(address_locked.status, 429);
    assert_eq!(
        login_from(&gateway, "ann", "correct horse", "10.0.0.3")
            .await
            .status,
        200
    );
    // The lockout is a length of time: waiting it out is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        login_from(&gateway, "md5user", "password", "10.0.0.3")
            .await
            .status,
        200
    );
    assert_eq!(
        login_from(&gateway, "ann", "correct horse", "10.0.0.2")
            .await
            .status,
        200
    );

    drop(gateway);
    database.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_login_me_protected_route_refresh_reuse_logout_legacy_hashes_lockout() {
    the_whole_journey(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_login_me_protected_route_refresh_reuse_logout_legacy_hashes_lockout() {
    the_whole_journey(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_share_sessions_identities_logouts_and_changes_at_once() {
    let database = TestDatabase::new(Dialect::Postgres).await.unwrap();
    let origin = echo_origin().await;
    let dir = TempDir::new("auth-redis");
    let store = format!("{}redis = \"{}\"\n", database.store_toml(), shared_redis());
    // This test's own keys and channels, removed at the end.
    let prefix = format!("sekisho:test:auth:{:016x}:", fastrand::u64(..));
    let text = config(
        &store,
        &origin.address.to_string(),
        &format!("session_store = \"redis\"\nredis_prefix = \"{prefix}\""),
    );
    let first_config = dir.write("a.toml", &text);
    let second_config = dir.write("b.toml", &text);
    seed(&first_config);
    let first = Sekisho::start(&binary(), &first_config);
    let second = Sekisho::start(&binary(), &second_config);

    let tokens = login(&first, "ann", "correct horse").await.json();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    // Each validates the other's session (and keeps it in its in-process cache).
    for gateway in [&first, &second, &first, &second] {
        assert_eq!(
            with_token(gateway, "GET", "/api/orders", &access, &[])
                .await
                .status,
            200
        );
    }
    // A refresh on the second; the first sees the rotation.
    let rotated = refresh(&second, &refresh_token).await.json();
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        with_token(&first, "GET", "/auth/me", &access, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        with_token(&second, "GET", "/auth/me", &access, &[])
            .await
            .status,
        200
    );
    // Logout on the second: the very next request on the first is refused.
    assert_eq!(
        with_token(&second, "POST", "/auth/logout", &access, &[])
            .await
            .status,
        204
    );
    assert_eq!(
        with_token(&first, "GET", "/api/orders", &access, &[])
            .await
            .status,
        401
    );
    assert_eq!(
        with_token(&second, "GET", "/api/orders", &access, &[])
            .await
            .status,
        401
    );

    // The second found the first's identities in the shared (Redis) tier.
    let l2_hits = l2_operations(&second, "user_permissions", "hit").await;
    assert!(l2_hits >= 1);

    // A user's roles changed on the first: the second sees it at the next request.
    let tokens = login(&first, "ann", "correct horse").await.json();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    for gateway in [&first, &second] {
        assert_eq!(
            with_token(gateway, "GET", "/api/orders", &access, &[])
                .await
                .status,
            200
        );
        assert_eq!(
            with_token(gateway, "GET", "/admin/x", &access, &[])
                .await
                .status,
            403
        );
    }
    let body = serde_json::json!({ "roles": ["admin"] }).to_string();
    let changed = send(
        &client(),
        "PUT",
        &first.admin_url("/api/v1/users/ann"),
        &[],
        body,
    )
    .await;
    assert_eq!(changed.status, 200);
    for gateway in [&second, &first] {
        assert_eq!(
            with_token(gateway, "GET", "/admin/x", &access, &[])
                .await
                .status,
            200
        );
        assert_eq!(
            with_token(gateway, "GET", "/api/orders", &access, &[])
                .await
                .status,
            403
        );
    }
    // A role's permissions changed by the CLI (a process of its own, publishing like an
    // instance): both gateways see it at the next request. Only the role's definition is
    // read again (`role_definitions`), never a user's grants (`user_permissions`): users'
    // entries name their roles, not the roles' permissions.
    let mut before = Vec::new();
    for gateway in [&first, &second] {
        before.push((
            l2_operations(gateway, "user_permissions", "miss").await,
            l2_operations(gateway, "role_definitions", "miss").await,
        ));
    }
    let second_path = second_config.to_str().unwrap();
    cli_ok(
        &[
            "role",
            "add",
            "--config",
            second_path,
            "admin",
            "--permission",
            "orders:write",
        ],
        "",
    );
    for gateway in [&first, &second] {
        assert_eq!(
            with_token(gateway, "GET", "/api/orders", &access, &[])
                .await
                .status,
            200
        );
    }
    let mut role_misses = 0;
    for (gateway, (users_before, roles_before)) in [&first, &second].into_iter().zip(before) {
        assert_eq!(
            l2_operations(gateway, "user_permissions", "miss").await,
            users_before,
            "a role's change leaves users' entries alone"
        );
        role_misses += l2_operations(gateway, "role_definitions", "miss").await - roles_before;
    }
    assert!(role_misses >= 1, "the role's definition was read again");
    // In Redis, as the seeds lay it out: the role's permissions kept for a day.
    let mut redis = redis::Client::open(shared_redis())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let role_key = format!("{prefix}e:role_definitions:v1:admin");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&role_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((3_600..=86_400).contains(&ttl), "{role_key}: TTL {ttl}");
    let definition: Vec<u8> = redis::cmd("GET")
        .arg(&role_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Vec<String>>(&definition).unwrap(),
        ["orders:write"]
    );

    drop((first, second));
    database.remove().await.unwrap();
    remove_keys(&shared_redis(), &prefix).await;
}

/// The gateway's `/metrics`.
async fn metrics_text(gateway: &Sekisho) -> String {
    String::from_utf8(
        sekisho_testkit::get(&gateway.admin_url("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap()
}

/// `sekisho_auth_cache_operations_total` of the shared tier for `cache` and `result`.
async fn l2_operations(gateway: &Sekisho, cache: &str, result: &str) -> u64 {
    let metrics = metrics_text(gateway).await;
    let series = format!(
        "sekisho_auth_cache_operations_total{{tier=\"l2\",cache=\"{cache}\",result=\"{result}\"}} "
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
        .parse()
        .unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_applied_migration_stops_the_start_with_a_clear_message() {
    let database = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let dir = TempDir::new("auth-migrate");
    let config = dir.write("m.toml", &config(&database.store_toml(), "127.0.0.1:9", ""));
    let path = config.to_str().unwrap();
    let status = cli_ok(&["migrate", "--config", path, "--status"], "");
    assert!(
        status.contains("0001 identity") && status.contains("pending"),
        "{status}"
    );
    let applied = cli_ok(&["migrate", "--config", path], "");
    // Every migration was pending in the new database (auth's and the alerting outbox's).
    assert!(
        applied.contains(&format!(
            "{} migration(s) applied",
            sekisho_db::MIGRATIONS.len()
        )),
        "{applied}"
    );
    let status = cli_ok(&["migrate", "--config", path, "--status"], "");
    assert!(status.contains("applied at"), "{status}");

    let db = database.open().await.unwrap();
    sekisho_db::sqlx::query("UPDATE schema_migrations SET checksum = 'tampered' WHERE version = 1")
        .execute(db.pool())
        .await
        .unwrap();
    db.close().await;
    let (code, _, stderr) = cli(&["run", "--config", path], "");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot start authentication"), "{stderr}");
    assert!(
        stderr.contains("migration 1 (identity) was applied with checksum tampered"),
        "{stderr}"
    );
    assert!(stderr.contains("refusing to start"), "{stderr}");
    let status = cli_ok(&["migrate", "--config", path, "--status"], "");
    assert!(status.contains("CHANGED"), "{status}");
    database.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_beyond_the_hash_queue_gets_503_while_proxied_routes_keep_answering() {
    let database = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let origin = echo_origin().await;
    let dir = TempDir::new("auth-flood");
    // One hash at a time, one waiting, each hash costly (OWASP's parameters).
    let text = config(
        &database.store_toml(),
        &origin.address.to_string(),
        "max_concurrent_hashes = 1\nhash_queue = 1",
    )
    .replace(
        "argon2 = { memory_kib = 64, iterations = 1, parallelism = 1 }",
        "argon2 = { memory_kib = 19456, iterations = 2, parallelism = 1 }",
    );
    let config = dir.write("flood.toml", &text);
    seed(&config);
    let gateway = Sekisho::start(&binary(), &config);

    let logins: Vec<_> = (0..24)
        .map(|_| {
            let url = gateway.url("/auth/login");
            tokio::spawn(async move {
                let body = serde_json::json!({ "username": "ann", "password": "correct horse" })
                    .to_string();
                send(&client(), "POST", &url, &[], body).await
            })
        })
        .collect();
    // While the flood runs, the proxy answers.
    let http = client();
    for _ in 0..10 {
        let started = std::time::Instant::now();
        let open = send(&http, "GET", &gateway.url("/open"), &[], Bytes::new()).await;
        assert_eq!(open.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let mut overloaded = 0;
    for login in logins {
        let answer = login.await.unwrap();
        match answer.status {
            503 => {
                assert_eq!(answer.error_code(), "OVERLOADED");
                assert!(answer.header("retry-after").is_some());
                overloaded += 1;
            }
            200 => {}
            other => panic!(
                "unexpected {other}: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }
    assert!(overloaded > 0, "no login was refused with 503");
    drop(gateway);
    database.remove().await.unwrap();
}

async fn admin(
    gateway: &Sekisho,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> sekisho_testkit::Answer {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    send(&client(), method, &gateway.admin_url(path), &[], body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_users_and_sessions_and_the_session_cookie_works() {
    let database = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let origin = echo_origin().await;
    let dir = TempDir::new("auth-admin");
    let config = dir.write(
        "admin.toml",
        &config(
            &database.store_toml(),
            &origin.address.to_string(),
            "cookie = true",
        ),
    );
    seed(&config);
    let gateway = Sekisho::start(&binary(), &config);

    // Five failures lock the account and the address; the admin API lists and clears them.
    for _ in 0..5 {
        assert_eq!(login(&gateway, "ann", "wrong").await.status, 401);
    }
    assert_eq!(login(&gateway, "ann", "correct horse").await.status, 429);
    let lockouts = admin(&gateway, "GET", "/api/v1/lockouts", serde_json::Value::Null)
        .await
        .json();
    let listed: Vec<(String, String)> = lockouts["lockouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_owned(),
                l["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        // By `KIND:NAME`, as every page of lockouts.
        [
            ("account".to_owned(), "ann".to_owned()),
            ("address".to_owned(), "10.0.0.1".to_owned())
        ]
    );
    assert!(lockouts["lockouts"][0]["retry_after"].as_u64().unwrap() > 800);
    // The account's lockout reaches its row through the background queue (a login never
    // waits for that write): wait for it, bounded.
    let mut ann = serde_json::Value::Null;
    for _ in 0..100 {
        ann = admin(
            &gateway,
            "GET",
            "/api/v1/users/ann",
            serde_json::Value::Null,
        )
        .await
        .json();
        if ann["locked_until"].is_i64() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ann["locked_until"].is_i64(), "{ann}");
    assert_eq!(
        admin(
            &gateway,
            "DELETE",
            "/api/v1/lockouts?user=ann",
            serde_json::Value::Null
        )
        .await
        .status,
        200
    );
    assert_eq!(
        login_from(&gateway, "ann", "correct horse", "10.0.0.5")
            .await
            .status,
        200
    );
    assert_eq!(
        login(&gateway, "bcryptuser", "password").await.status,
        429,
        "the address is still locked"
    );
    assert_eq!(
        admin(
            &gateway,
            "DELETE",
            "/api/v1/lockouts?address=10.0.0.1",
            serde_json::Value::Null
        )
        .await
        .status,
        200
    );
    assert_eq!(login(&gateway, "bcryptuser", "password").await.status, 200);
    let ann = admin(
        &gateway,
        "GET",
        "/api/v1/users/ann",
        serde_json::Value::Null,
    )
    .await
    .json();
    assert!(ann["locked_until"].is_null(), "{ann}");

    let created = admin(
        &gateway,
        "POST",
        "/api/v1/users",
        serde_json::json!({"username": "bob", "password": "pw-bob", "roles": ["clerk"]}),
    )
    .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.json()["password_scheme"], "argon2id");
    let again = admin(
        &gateway,
        "POST",
        "/api/v1/users",
        serde_json::json!({"username": "bob", "password": "x"}),
    )
    .await;
    assert_eq!(again.status, 409);
    let listed = admin(&gateway, "GET", "/api/v1/users", serde_json::Value::Null)
        .await
        .json();
    let names: Vec<&str> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ann", "bcryptuser", "bob", "md5user"]);
    let md5 = admin(
        &gateway,
        "GET",
        "/api/v1/users/md5user",
        serde_json::Value::Null,
    )
    .await
    .json();
    assert_eq!(md5["password_scheme"], "md5");
    assert_eq!(md5["disabled"], false);
    assert!(md5["locked_until"].is_null());
    let bob = admin(
        &gateway,
        "GET",
        "/api/v1/users/bob",
        serde_json::Value::Null,
    )
    .await
    .json();
    assert_eq!(bob["roles"], serde_json::json!(["clerk"]));
    assert_eq!(
        bob["permissions"],
        serde_json::json!(["orders:read", "orders:write"])
    );

    // Login sets the __Host- cookie; the cookie alone authenticates.
    let login = login(&gateway, "bob", "pw-bob").await;
    let set_cookie = login.header("set-cookie").unwrap().to_owned();
    assert!(set_cookie.starts_with("__Host-sekisho="), "{set_cookie}");
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let with_cookie = |path: &'static str| {
        let url = gateway.url(path);
        let cookie = cookie.clone();
        async move {
            send(
                &client(),
                "GET",
                &url,
                &[("cookie", cookie.as_str())],
                Bytes::new(),
            )
            .await
        }
    };
    assert_eq!(with_cookie("/api/orders").await.status, 200);
    assert_eq!(with_cookie("/admin/x").await.status, 403);
    // Authenticated by cookie is authenticated: a cached route neither stores nor serves it.
    for _ in 0..2 {
        let cached = with_cookie("/cached/me").await;
        assert_eq!(cached.status, 200);
        let status = cached.header("cache-status").unwrap_or_default();
        assert!(status.contains("fwd=bypass"), "{status}");
    }
    assert_eq!(origin.calls("/cached/me"), 2);

    let sessions = admin(
        &gateway,
        "GET",
        "/api/v1/sessions?user=bob",
        serde_json::Value::Null,
    )
    .await
    .json();
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);

    // New roles take effect at once (the in-process identity is dropped).
    let updated = admin(
        &gateway,
        "PUT",
        "/api/v1/users/bob",
        serde_json::json!({"roles": ["admin"]}),
    )
    .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.json()["roles"], serde_json::json!(["admin"]));
    assert_eq!(with_cookie("/admin/x").await.status, 200);
    assert_eq!(with_cookie("/api/orders").await.status, 403);

    // Revoking the sessions logs bob out everywhere.
    let revoked = admin(
        &gateway,
        "DELETE",
        "/api/v1/sessions?user=bob",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(revoked.json()["revoked"], 1);
    assert_eq!(with_cookie("/admin/x").await.status, 401);

    let deleted = admin(
        &gateway,
        "DELETE",
        "/api/v1/users/bob",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        admin(
            &gateway,
            "GET",
            "/api/v1/users/bob",
            serde_json::Value::Null
        )
        .await
        .status,
        404
    );

    // The auth metrics.
    let metrics = metrics_text(&gateway).await;
    for expected in [
        "sekisho_auth_requests_total{status=\"200\",error_type=\"none\"}",
        "sekisho_auth_requests_total{status=\"403\",error_type=\"FORBIDDEN\"}",
        "sekisho_auth_requests_total{status=\"401\",error_type=\"UNAUTHENTICATED\"}",
        "sekisho_auth_duration_seconds_bucket{le=\"0.01\",operation=\"login\"}",
        "sekisho_auth_duration_seconds_count{operation=\"validate\"}",
        "sekisho_active_sessions ",
        "sekisho_auth_background_dropped_total 0",
        "sekisho_auth_cache_operations_total{tier=\"l1\",cache=\"session\",result=\"hit\"}",
        "sekisho_auth_cache_operations_total{tier=\"l1\",cache=\"session\",result=\"miss\"}",
        "sekisho_auth_cache_operations_total{tier=\"l1\",cache=\"user_basic\",result=\"miss\"}",
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
    promtool(&["check", "metrics"], &metrics);
    drop(gateway);
    database.remove().await.unwrap();
}

/// Issue 15, with sessions in the database (`session_store = "local"`) and Redis configured:
/// the second gateway finds a session the first validated in the shared tier
/// (`session_data`), and a logout on the first is seen by the second at once (without the
/// shared tier, only when its cached entry ends). Failed logins from one address spread over
/// the two gateways meet one count in Redis (per instance, the third failure below would leave
/// each gateway under the limit); the lockout is honoured by both, listed by both admin APIs,
/// and cleared for both by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_share_session_data_and_failed_login_counts() {
    let database = TestDatabase::new(Dialect::Postgres).await.unwrap();
    let origin = echo_origin().await;
    let dir = TempDir::new("auth-lockout-redis");
    let store = format!("{}redis = \"{}\"\n", database.store_toml(), shared_redis());
    let prefix = format!("sekisho:test:auth:{:016x}:", fastrand::u64(..));
    let text = config(
        &store,
        &origin.address.to_string(),
        &format!(
            "redis_prefix = \"{prefix}\"\n\
             lockout = {{ max_failures = 3, window = \"60s\", duration = \"60s\" }}"
        ),
    );
    let first_config = dir.write("a.toml", &text);
    let second_config = dir.write("b.toml", &text);
    seed(&first_config);
    let first = Sekisho::start(&binary(), &first_config);
    let second = Sekisho::start(&binary(), &second_config);
    let address = "203.0.113.77";

    let tokens = login(&first, "ann", "correct horse").await.json();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    for gateway in [&first, &second] {
        assert_eq!(
            with_token(gateway, "GET", "/api/orders", &access, &[])
                .await
                .status,
            200
        );
    }
    let metrics = String::from_utf8(
        sekisho_testkit::get(&second.admin_url("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    let session_hits: u64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "sekisho_auth_cache_operations_total{tier=\"l2\",cache=\"session_data\",result=\"hit\"} ",
            )
        })
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(session_hits, 1, "{metrics}");
    assert_eq!(
        with_token(&first, "POST", "/auth/logout", &access, &[])
            .await
            .status,
        204
    );
    assert_eq!(
        with_token(&second, "GET", "/api/orders", &access, &[])
            .await
            .status,
        401,
        "the logout is seen by the other gateway at once"
    );

    // Three different (unknown) accounts, so that only the address's count can lock.
    for (gateway, user) in [(&first, "x1"), (&second, "x2"), (&first, "x3")] {
        assert_eq!(
            login_from(gateway, user, "guess", address).await.status,
            401
        );
    }
    for gateway in [&second, &first] {
        let refused = login_from(gateway, "ann", "correct horse", address).await;
        assert_eq!(refused.status, 429, "locked on every instance");
        assert!(refused.headers.contains_key("retry-after"));
    }
    // Another address is not concerned.
    assert_eq!(
        login_from(&second, "ann", "correct horse", "203.0.113.78")
            .await
            .status,
        200
    );
    // Both admin APIs list it; one clears it for both.
    for gateway in [&first, &second] {
        let listed = sekisho_testkit::get(&gateway.admin_url("/api/v1/lockouts"))
            .await
            .json();
        let lockouts = listed["lockouts"].as_array().unwrap();
        assert!(
            lockouts
                .iter()
                .any(|l| l["kind"] == "address" && l["name"] == address),
            "{listed}"
        );
    }
    let cleared = send(
        &client(),
        "DELETE",
        &first.admin_url(&format!("/api/v1/lockouts?address={address}")),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(cleared.status, 200);
    assert_eq!(cleared.json()["was_locked"], true);
    assert_eq!(
        login_from(&second, "ann", "correct horse", address)
            .await
            .status,
        200
    );

    drop((first, second));
    database.remove().await.unwrap();
    remove_keys(&shared_redis(), &prefix).await;
}
