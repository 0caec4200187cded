//! Rate limits through the gateway, in process, with a real upstream: 429 RATE_LIMITED with
//! Retry-After beyond the quota, `RateLimit-*` fields on every answer of a limited route, keys
//! by header and API key, a server-wide limit over every route, and `X-Forwarded-For` believed
//! only from trusted proxies.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use sekisho_testkit::{chaos_upstream, client, send, InProcess};

fn config(upstream: &str, server_extra: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n{server_extra}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{upstream}\"]\n{routes}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_its_quota_a_route_answers_429_and_tells_the_client_its_figures() {
    let app = chaos_upstream("app").await;
    let gw = InProcess::start(&config(
        &app.address.to_string(),
        "",
        "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"app\"\n\
         [routes.rate_limit]\nalgorithm = \"token_bucket\"\ncapacity = 3\nrefill_per_second = 0.01\nkey = \"header:X-Tenant\"\n\
         [[routes]]\nname = \"free\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
    ))
    .await;
    let http = client();
    let tenant = |name: &'static str| [("x-tenant", name)];
    for remaining in ["2", "1", "0"] {
        let answer = send(
            &http,
            "GET",
            &gw.url("/api/x"),
            &tenant("acme"),
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("ratelimit-limit"), Some("3"));
        assert_eq!(answer.header("ratelimit-remaining"), Some(remaining));
        assert!(answer.header("ratelimit-reset").is_some());
    }
    let refused = send(
        &http,
        "GET",
        &gw.url("/api/x"),
        &tenant("acme"),
        Bytes::new(),
    )
    .await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "RATE_LIMITED");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    // One token at 0.01/s comes back in 100 s.
    assert!((99..=101).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert_eq!(
        app.handle.requests(),
        3,
        "the refused request never reached the upstream"
    );
    // What a key has left, as the admin API reads it, without spending anything.
    for _ in 0..2 {
        let usage = gw.gateway.rate_limit_usage("api", "h=acme").await.unwrap();
        assert_eq!((usage.limit, usage.remaining), (3, 0));
    }
    let unseen = gw
        .gateway
        .rate_limit_usage("api", "h=nobody")
        .await
        .unwrap();
    assert_eq!(unseen.remaining, 3);
    assert!(gw
        .gateway
        .rate_limit_usage("free", "h=acme")
        .await
        .is_none());
    // Another tenant has its own bucket; a route without a limit has no fields.
    let other = send(
        &http,
        "GET",
        &gw.url("/api/x"),
        &tenant("globex"),
        Bytes::new(),
    )
    .await;
    assert_eq!(other.status, 200);
    let free = send(&http, "GET", &gw.url("/free"), &[], Bytes::new()).await;
    assert_eq!(free.status, 200);
    assert!(free.header("ratelimit-limit").is_none());
    let metrics = gw.gateway.encode_metrics();
    assert!(
        metrics.contains("sekisho_rate_limit_decisions_total{route=\"api\",result=\"limited\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sekisho_rate_limit_decisions_total{route=\"api\",result=\"allowed\"} 4")
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_wide_limit_counts_every_route_and_trusts_only_its_proxies() {
    let app = chaos_upstream("app").await;
    let gw = InProcess::start(&config(
        &app.address.to_string(),
        "trusted_proxies = [\"127.0.0.1\"]\n\
         [server.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 2\nwindow = \"1h\"\nkey = \"client_ip\"\n",
        "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"app\"\n\
         [[routes]]\nname = \"b\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
    ))
    .await;
    let http = client();
    // The test client connects from 127.0.0.1, a trusted proxy: the client is the last
    // untrusted hop of X-Forwarded-For, whatever the client put left of it.
    let from = |chain: &'static str| [("x-forwarded-for", chain)];
    let first = send(
        &http,
        "GET",
        &gw.url("/a"),
        &from("203.0.113.1"),
        Bytes::new(),
    )
    .await;
    let second = send(
        &http,
        "GET",
        &gw.url("/b"),
        &from("6.6.6.6, 203.0.113.1"),
        Bytes::new(),
    )
    .await;
    assert_eq!((first.status, second.status), (200, 200));
    let third = send(
        &http,
        "GET",
        &gw.url("/b"),
        &from("203.0.113.1"),
        Bytes::new(),
    )
    .await;
    assert_eq!(third.status, 429, "two routes, one server-wide quota");
    // Another client behind the proxy has its own quota.
    let other = send(
        &http,
        "GET",
        &gw.url("/a"),
        &from("203.0.113.2"),
        Bytes::new(),
    )
    .await;
    assert_eq!(other.status, 200);
    gw.stop().await;

    // Without trusted proxies the header is the client's word and is ignored.
    let gw = InProcess::start(&config(
        &app.address.to_string(),
        "[server.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 2\nwindow = \"1h\"\n",
        "[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
    ))
    .await;
    let url = gw.url("/");
    let mut statuses = Vec::new();
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let answer = send(&http, "GET", &url, &[("x-forwarded-for", ip)], Bytes::new()).await;
        statuses.push(answer.status);
    }
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200, 200, 429], "{statuses:?}");
    gw.stop().await;
}

/// Not ready while the first attempt to reach the config's Redis is still going on: a Redis that
/// accepts the connection and never answers holds it for the connect timeout (1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_redis_has_been_tried_once() {
    let app = chaos_upstream("app").await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let config = config(
        &app.address.to_string(),
        "",
        "[[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [routes.rate_limit]\nalgorithm = \"fixed_window\"\nlimit = 10\nwindow = \"1m\"\nbackend = \"redis\"\n",
    )
    .replace(
        "[admin]",
        &format!("[store]\nredis = \"redis://{silent_address}\"\n[admin]"),
    );
    let gw = InProcess::start(&config).await;
    // The link is connecting once the silent server sees it; hold the socket open, say nothing.
    let (_held, _) = tokio::time::timeout(std::time::Duration::from_secs(5), silent.accept())
        .await
        .expect("the gateway connects to its Redis at start")
        .unwrap();
    let status = gw.gateway.status();
    assert!(status.store_connecting && !status.ready);
    // The attempt times out; then the gateway serves, deciding by on_store_error.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !gw.gateway.status().ready {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("ready once the attempt has ended");
    assert!(!gw.gateway.status().store_connecting);
    let answer = send(&client(), "GET", &gw.url("/"), &[], Bytes::new()).await;
    assert_eq!(
        answer.status, 200,
        "on_store_error = local decides meanwhile"
    );
    gw.stop().await;
}
