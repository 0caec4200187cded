//! The response cache shared through a real Redis by two real gateway processes: a cold URL hit
//! through both at once makes one upstream call, and a purge on one instance empties the
//! in-process tier of the other.
//!
//! Redis is `SEKISHO_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); each test names its
//! route with a random suffix, so runs never share keys.
// The helpers outside the #[test] functions fail their test as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use sekisho_testkit::{client, send, Origin, Reply, Sekisho, TempDir};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

fn redis() -> String {
    std::env::var("SEKISHO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn gateway(dir: &TempDir, name: &str, origin: &Origin, route: &str) -> Sekisho {
    gateway_with(dir, name, origin, route, "ttl = \"60s\"")
}

fn gateway_with(dir: &TempDir, name: &str, origin: &Origin, route: &str, cache: &str) -> Sekisho {
    let config = dir.write(
        &format!("{name}.toml"),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [store]\nredis = \"{}\"\n\
             [upstreams.app]\ntargets = [\"{}\"]\n\
             [[routes]]\nname = \"{route}\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
             [routes.cache]\n{cache}\n",
            redis(),
            origin.address
        ),
    );
    Sekisho::start(&binary(), &config)
}

async fn admin_json(method: &str, url: &str, body: &str) -> serde_json::Value {
    let answer = send(&client(), method, url, &[], Bytes::from(body.to_owned())).await;
    assert_eq!(answer.status, 200, "{url}: {:?}", answer.body);
    answer.json()
}

/// Waits until `gateway` shares its cache through Redis and listens for purges.
async fn await_shared(gateway: &Sekisho) {
    let url = gateway.admin_url("/api/v1/cache");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let status = admin_json("GET", &url, "").await;
            if status["cache"]["shared"] == true && status["cache"]["subscribed"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the cache is shared and subscribed within 10 s");
}

fn origin_script(head: &http::request::Parts, n: u64) -> Reply {
    if head.method == http::Method::POST {
        return Reply::new(201, "created");
    }
    let inm = head.headers.get("if-none-match").is_some();
    match head.uri.path() {
        // Stored, and revalidated on every use; the 304 takes a while.
        "/no-cache" if inm => Reply::new(304, "")
            .header("cache-control", "no-cache")
            .after(Duration::from_millis(300)),
        "/no-cache" if n == 1 => Reply::new(200, "nc body")
            .header("etag", "\"n1\"")
            .header("cache-control", "no-cache"),
        "/no-cache" => Reply::new(500, "revalidation expected"),
        "/long" => Reply::new(200, format!("long {n}")).header("cache-control", "max-age=3600"),
        "/cold" => Reply::new(200, format!("cold-{n}")).after(Duration::from_millis(300)),
        // Tags are shared by every route: one per path keeps runs apart.
        path => Reply::new(200, format!("{path} {n}")).header("cache-tag", &format!("tag{path}")),
    }
}

/// The origin, and two gateways in front of it sharing one cached route (named `label` with a
/// random suffix) through Redis, both subscribed.
async fn two_instances(label: &str) -> (Origin, TempDir, String, Sekisho, Sekisho) {
    let origin = Origin::start(origin_script).await;
    let dir = TempDir::new(&format!("cache-redis-{label}"));
    let route = format!("{label}{:08x}", fastrand::u32(..));
    let a = gateway(&dir, "a", &origin, &route);
    let b = gateway(&dir, "b", &origin, &route);
    await_shared(&a).await;
    await_shared(&b).await;
    (origin, dir, route, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_url_through_two_instances_at_once_makes_one_upstream_call() {
    let (origin, _dir, _route, a, b) = two_instances("cold").await;
    let http = client();
    // Both instances are behind one name, as behind a load balancer: the key holds the host.
    let host = [("host", "shop.example")];
    let requests = (0..40).map(|i| {
        let url = if i % 2 == 0 {
            a.url("/cold")
        } else {
            b.url("/cold")
        };
        let http = http.clone();
        async move { send(&http, "GET", &url, &host, Bytes::new()).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "cold-1");
    }
    assert_eq!(
        origin.calls("/cold"),
        1,
        "one upstream call for both instances"
    );
    let from_redis = answers
        .iter()
        .filter(|a| a.header("cache-status").unwrap().contains("detail=l2"))
        .count();
    assert!(
        from_redis >= 1,
        "the other instance was answered from Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_instance_empties_the_in_process_tier_of_the_other() {
    let (origin, _dir, route, a, b) = two_instances("purge").await;
    let http = client();
    let host = [("host", "shop.example")];
    let path = format!("/item-{route}");
    for _ in 0..3 {
        let answer = send(&http, "GET", &b.url(&path), &host, Bytes::new()).await;
        assert_eq!(answer.body, format!("{path} 1"));
    }
    assert_eq!(origin.calls(&path), 1);

    let purged = admin_json(
        "POST",
        &a.admin_url("/api/v1/cache/purge"),
        &format!(r#"{{"tag": "tag{path}"}}"#),
    )
    .await;
    assert_eq!(purged["shared_deleted"], 1, "{purged}");
    // The message reaches B asynchronously: wait for B's answer to change.
    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = send(&http, "GET", &b.url(&path), &host, Bytes::new()).await;
            if answer.body != format!("{path} 1") {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("B dropped its in-process copy");
    assert_eq!(fresh.body, format!("{path} 2"));
    assert_eq!(origin.calls(&path), 2);
}

/// Deletes the route's keys from Redis (through the admin API's prefix purge).
async fn clean_up(gateway: &Sekisho, route: &str) {
    admin_json(
        "POST",
        &gateway.admin_url("/api/v1/cache/purge"),
        &format!(r#"{{"prefix": "{route}:"}}"#),
    )
    .await;
}

/// RFC 9111 §4.4 across instances: a successful POST on one instance invalidates the URL's
/// entry in Redis and in the other instance's in-process tier (through the purge channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_one_instance_invalidates_the_url_on_the_other() {
    let (origin, _dir, route, a, b) = two_instances("unsafe").await;
    let http = client();
    let host = [("host", "shop.example")];
    let path = format!("/item-{route}");
    for _ in 0..2 {
        let answer = send(&http, "GET", &b.url(&path), &host, Bytes::new()).await;
        assert_eq!(answer.body, format!("{path} 1"));
    }
    let posted = send(
        &http,
        "POST",
        &a.url(&path),
        &host,
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(posted.status, 201);
    // The purge message reaches B asynchronously: wait for B's answer to change.
    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = send(&http, "GET", &b.url(&path), &host, Bytes::new()).await;
            if answer.body != format!("{path} 1") {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("B dropped its copy");
    // GET, POST, GET: the entry was gone from Redis too.
    assert_eq!(fresh.body, format!("{path} 3"));
    assert_eq!(origin.calls(&path), 3);
    clean_up(&a, &route).await;
    // The answers carried a tag: its set goes too.
    admin_json(
        "POST",
        &a.admin_url("/api/v1/cache/purge"),
        &format!(r#"{{"tag": "tag{path}"}}"#),
    )
    .await;
}

/// With Redis, `l1_ttl` bounds only the in-process copy: past it, the entry comes from Redis
/// for as long as the origin allowed (`max-age=3600`), not from the origin again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_l1_ttl_the_entry_comes_from_redis_not_the_origin() {
    let origin = Origin::start(origin_script).await;
    let dir = TempDir::new("cache-redis-l1");
    let route = format!("l1{:08x}", fastrand::u32(..));
    let a = gateway_with(
        &dir,
        "a",
        &origin,
        &route,
        "l1_ttl = \"1s\"\nttl_jitter = 0.0",
    );
    await_shared(&a).await;
    let http = client();
    assert_eq!(
        send(&http, "GET", &a.url("/long"), &[], Bytes::new())
            .await
            .body,
        "long 1"
    );
    // The passage of time is what is tested: past l1_ttl.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = send(&http, "GET", &a.url("/long"), &[], Bytes::new()).await;
    assert_eq!(later.body, "long 1");
    let status = later.header("cache-status").unwrap();
    assert!(
        status.contains("hit") && status.contains("detail=l2"),
        "{status}"
    );
    assert_eq!(origin.calls("/long"), 1);
    clean_up(&a, &route).await;
}

/// A `no-cache` entry through two instances: concurrent requests on both make one conditional
/// request, the instance that waits for the other's fill lock taking the entry it revalidated
/// (stale on arrival, but stored after the wait began) instead of waiting `lock_wait` out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_revalidation_for_two_instances() {
    let (origin, _dir, route, a, b) = two_instances("reval").await;
    let http = client();
    let host = [("host", "shop.example")];
    let first = send(&http, "GET", &a.url("/no-cache"), &host, Bytes::new()).await;
    assert_eq!(first.body, "nc body");
    let requests = (0..20).map(|i| {
        let url = if i % 2 == 0 {
            a.url("/no-cache")
        } else {
            b.url("/no-cache")
        };
        let http = http.clone();
        async move { send(&http, "GET", &url, &host, Bytes::new()).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "nc body");
    }
    // Without taking the other instance's fresh revalidation, the waiting instance would sit
    // out lock_wait and then revalidate again (3 calls).
    assert_eq!(
        origin.calls("/no-cache"),
        2,
        "one revalidation for both instances"
    );
    clean_up(&a, &route).await;
}
