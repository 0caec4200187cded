//! A login's parts, with OWASP's argon2id parameters (m = 19 MiB, t = 2, p = 1), against the
//! seed's 495 ms (user query 120 ms, permissions one query at a time 230 ms, session 85 ms, MD5):
//! the user with its roles and permissions (one query), the password check (on the hashing
//! pool), the session's creation, and a whole `Auth::login` — on SQLite (embedded) and on
//! PostgreSQL (127.0.0.1:5432; `SEKISHO_TEST_POSTGRES`). Then logins from 4 concurrent clients
//! for a few seconds: p50/p95 and logins per second.
//!
//! Run: `cargo bench -p sekisho-auth --bench login`.
// A benchmark, not a request path: a setup that fails may panic.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use sekisho_auth::Auth;
use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn setup(dialect: Dialect) -> (Arc<Auth>, TestDatabase) {
    let database = TestDatabase::new(dialect).await.expect("database");
    let source = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[auth]\nmax_concurrent_hashes = 4\nlockout = {{ max_failures = 0 }}\n",
        database.store_toml()
    );
    let config = sekisho_config::parse(&source, "bench.toml").expect("config");
    let auth = Arc::new(Auth::open(&config, None).await.expect("auth"));
    // The seed's shape: a few roles, each with a few permissions.
    for role in 0..4 {
        let permissions: Vec<String> = (0..5).map(|p| format!("res{role}:perm{p}")).collect();
        auth.put_role(&format!("role{role}"), &permissions)
            .await
            .expect("role");
    }
    let roles: Vec<String> = (0..4).map(|r| format!("role{r}")).collect();
    auth.create_user("ann", Some("correct horse battery"), None, &roles)
        .await
        .expect("user");
    (auth, database)
}

fn bench(c: &mut Criterion, runtime: &tokio::runtime::Runtime, dialect: Dialect, name: &str) {
    let (auth, database) = runtime.block_on(setup(dialect));
    let mut group = c.benchmark_group(format!("login/{name}"));
    group.sample_size(20);
    group.bench_function("get user, roles and permissions (one query)", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.directory().user_by_name(black_box("ann")))
                .expect("query")
        })
    });
    let stored = runtime
        .block_on(auth.directory().user_by_name("ann"))
        .expect("query")
        .expect("user")
        .password_hash;
    group.bench_function("verify password (argon2id, OWASP minimum)", |b| {
        b.iter(|| {
            auth.hasher()
                .verify(black_box("correct horse battery"), &stored)
        })
    });
    group.bench_function("verify password (MD5, the seed's)", |b| {
        b.iter(|| {
            auth.hasher()
                .verify(black_box("password"), "5f4dcc3b5aa765d61d8327deb882cf99")
        })
    });
    let user_id = runtime.block_on(auth.user("ann")).expect("user").id;
    let lifetimes = sekisho_auth::sessions::Lifetimes {
        access_ms: 300_000,
        refresh_ms: 7 * 86_400_000,
        absolute_ms: 12 * 3_600_000,
    };
    group.bench_function("create session", |b| {
        b.iter(|| {
            runtime
                .block_on(
                    auth.sessions()
                        .create(user_id, lifetimes, Some("127.0.0.1")),
                )
                .expect("session")
        })
    });
    group.bench_function("whole login (query, hash on the pool, session)", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.login("ann", "correct horse battery", CLIENT))
                .expect("login")
        })
    });
    group.finish();

    // 4 concurrent clients for 5 s.
    let latencies = runtime.block_on(async {
        let stop = Instant::now() + Duration::from_secs(5);
        let mut clients = Vec::new();
        for _ in 0..4 {
            let auth = Arc::clone(&auth);
            clients.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while Instant::now() < stop {
                    let started = Instant::now();
                    auth.login("ann", "correct horse battery", CLIENT)
                        .await
                        .expect("login");
                    seen.push(started.elapsed());
                }
                seen
            }));
        }
        let mut all = Vec::new();
        for client in clients {
            all.extend(client.await.expect("client"));
        }
        all
    });
    let mut sorted = latencies.clone();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    println!(
        "login/{name}/4 concurrent clients, 5 s: {} logins, {:.1}/s, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms ({} cores)",
        sorted.len(),
        sorted.len() as f64 / 5.0,
        at(0.50).as_secs_f64() * 1e3,
        at(0.95).as_secs_f64() * 1e3,
        sorted.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    runtime.block_on(async {
        auth.flush().await;
        auth.directory().database().close().await;
        database.remove().await.expect("remove");
    });
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &runtime, Dialect::Sqlite, "sqlite");
    bench(&mut criterion, &runtime, Dialect::Postgres, "postgres");
    criterion.final_summary();
}
