//! The response cache through the gateway, in process, against a scripted origin over real
//! sockets: one upstream call for a stampede of cold requests, hits with `Age` and
//! `Cache-Status`, 304 for a matching `If-None-Match`, `Vary` and `Authorization`, negative
//! caching, stale-while-revalidate, stale-if-error, purges, and what is never stored.
// The helpers outside the #[test] functions fail their test as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use sekisho_gateway::cache::Purge;
use sekisho_testkit::{client, send, InProcess, Origin, Reply};

fn config(origin: &Origin, cache: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"c\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [routes.cache]\n{cache}\n",
        origin.address
    )
}

/// The origin every test uses: its answer depends on the path.
async fn origin() -> Origin {
    Origin::start(|head, n| {
        let path = head.uri.path();
        let header = |name: &str| {
            head.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        match path {
            "/slow" => Reply::new(200, format!("payload-{n}")).after(Duration::from_millis(300)),
            "/etag" => Reply::new(200, "tagged body")
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=60"),
            "/vary" => Reply::new(200, format!("{}-{n}", header("accept-language")))
                .header("vary", "Accept-Language"),
            "/slow-vary" => Reply::new(200, format!("{}-{n}", header("accept-language")))
                .header("vary", "Accept-Language")
                .after(Duration::from_millis(300)),
            "/missing" => Reply::new(404, format!("not here {n}")),
            "/nostore" => Reply::new(200, format!("fresh {n}")).header("cache-control", "no-store"),
            "/cookie" => Reply::new(200, format!("mine {n}")).header("set-cookie", "s=1"),
            "/big" => Reply::new(200, "x".repeat(100)),
            // Already stale when it arrives (Age beyond max-age).
            "/swr" => Reply::new(200, format!("v{n}"))
                .header("cache-control", "max-age=1")
                .header("age", "5"),
            "/sie" if n == 1 => Reply::new(200, "good")
                .header("cache-control", "max-age=1")
                .header("age", "5"),
            "/sie" => Reply::new(503, "down"),
            p if p.starts_with("/tagged/") => {
                let group = if p.ends_with('1') {
                    "group-a"
                } else {
                    "group-b"
                };
                Reply::new(200, format!("{p} {n}")).header("cache-tag", group)
            }
            _ => Reply::new(200, format!("{path} {n}")),
        }
    })
    .await
}

async fn get(gw: &InProcess, path: &str, headers: &[(&str, &str)]) -> sekisho_testkit::Answer {
    send(&client(), "GET", &gw.url(path), headers, Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_cold_requests_make_one_upstream_call() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "ttl = \"60s\"")).await;
    let http = client();
    let url = gw.url("/slow");
    let answers = futures_util::future::join_all(
        (0..200).map(|_| send(&http, "GET", &url, &[], Bytes::new())),
    )
    .await;
    assert_eq!(
        origin.calls("/slow"),
        1,
        "one upstream call for 200 cold requests"
    );
    let mut stored = 0;
    let mut collapsed = 0;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "payload-1");
        let status = answer.header("cache-status").unwrap();
        if status.contains("stored") {
            stored += 1;
        } else if status.contains("collapsed") || status.contains("hit") {
            collapsed += 1;
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(collapsed, 199);
    gw.stop().await;
}

/// Concurrent cold requests for a response that varies collapse too: one upstream call per
/// variant asked for, each request answered with its own variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_for_a_varying_response_make_one_call_per_variant() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "ttl = \"60s\"")).await;
    let http = client();
    let url = gw.url("/slow-vary");
    let languages = ["en", "fr"];
    let answers = futures_util::future::join_all((0..60).map(|i| {
        let language = languages[i % 2];
        let (http, url) = (&http, &url);
        async move {
            let answer = send(
                http,
                "GET",
                url,
                &[("accept-language", language)],
                Bytes::new(),
            )
            .await;
            (language, answer)
        }
    }))
    .await;
    assert_eq!(
        origin.calls("/slow-vary"),
        2,
        "one upstream call per variant for 60 cold requests"
    );
    for (language, answer) in &answers {
        assert_eq!(answer.status, 200);
        let body = std::str::from_utf8(&answer.body).unwrap();
        assert!(
            body.starts_with(&format!("{language}-")),
            "{language}: {body}"
        );
    }
    // Both variants were stored under one marker: each is a hit now.
    for language in languages {
        let again = get(&gw, "/slow-vary", &[("accept-language", language)]).await;
        assert!(again.header("cache-status").unwrap().contains("hit"));
    }
    assert_eq!(origin.calls("/slow-vary"), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_carry_age_and_a_matching_etag_gets_304() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "ttl = \"60s\"")).await;
    let first = get(&gw, "/etag", &[("if-none-match", "\"v1\"")]).await;
    // The cache asked the origin for the whole answer, stored it, and answered the condition.
    assert_eq!(first.status, 304);
    assert!(first.header("cache-status").unwrap().contains("stored"));
    let hit = get(&gw, "/etag", &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, "tagged body");
    assert!(hit
        .header("cache-status")
        .unwrap()
        .starts_with("sekisho; hit; ttl="));
    assert!(hit.header("age").is_some());
    assert_eq!(hit.header("etag"), Some("\"v1\""));
    let not_modified = get(&gw, "/etag", &[("if-none-match", "W/\"v0\", \"v1\"")]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    let other = get(&gw, "/etag", &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(origin.calls("/etag"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart_and_authorization_bypasses() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "ttl = \"60s\"")).await;
    let en = get(&gw, "/vary", &[("accept-language", "en")]).await;
    let fr = get(&gw, "/vary", &[("accept-language", "fr")]).await;
    let en_again = get(&gw, "/vary", &[("accept-language", "en")]).await;
    let fr_again = get(&gw, "/vary", &[("accept-language", "fr")]).await;
    assert_eq!(en.body, "en-1");
    assert_eq!(fr.body, "fr-2");
    assert_eq!(en_again.body, "en-1");
    assert_eq!(fr_again.body, "fr-2");
    assert_eq!(origin.calls("/vary"), 2);

    for _ in 0..2 {
        let private = get(&gw, "/private", &[("authorization", "Bearer secret")]).await;
        assert_eq!(private.header("cache-status"), Some("sekisho; fwd=bypass"));
    }
    assert_eq!(origin.calls("/private"), 2, "never answered from the cache");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negatives_are_cached_and_what_must_not_be_stored_is_not() {
    let origin = origin().await;
    let gw = InProcess::start(&config(
        &origin,
        "ttl = \"60s\"\nnegative_ttl = \"30s\"\nmax_body_bytes = 10",
    ))
    .await;
    for _ in 0..3 {
        let missing = get(&gw, "/missing", &[]).await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.body, "not here 1");
    }
    assert_eq!(origin.calls("/missing"), 1, "404 kept for negative_ttl");
    for path in ["/nostore", "/cookie", "/big"] {
        for _ in 0..2 {
            let answer = get(&gw, path, &[]).await;
            assert_eq!(answer.status, 200);
            assert!(answer
                .header("cache-status")
                .unwrap()
                .contains("fwd=uri-miss"));
        }
        assert_eq!(origin.calls(path), 2, "{path} is not stored");
    }
    assert_eq!(
        get(&gw, "/big", &[]).await.body.len(),
        100,
        "passed through whole"
    );
    gw.stop().await;
}

/// Waits until the origin has seen `calls` calls of `path` (a background refresh).
async fn await_calls(origin: &Origin, path: &str, calls: u64) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while origin.calls(path) < calls {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the refresh reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_stale_then_refreshes() {
    let origin = origin().await;
    let gw = InProcess::start(&config(
        &origin,
        "ttl = \"60s\"\nstale_while_revalidate = \"60s\"",
    ))
    .await;
    assert_eq!(get(&gw, "/swr", &[]).await.body, "v1");
    let stale = get(&gw, "/swr", &[]).await;
    assert_eq!(stale.body, "v1", "answered at once with the stale copy");
    assert!(stale
        .header("cache-status")
        .unwrap()
        .contains("detail=stale-while-revalidate"));
    await_calls(&origin, "/swr", 2).await;
    // The refresh stores v2 once its body is read; the next request sees it.
    let refreshed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = get(&gw, "/swr", &[]).await;
            if answer.body != "v1" {
                return answer;
            }
        }
    })
    .await
    .unwrap();
    assert!(refreshed.body.starts_with(b"v"));
    assert_ne!(refreshed.body, "v1");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_old_answer_while_the_upstream_fails() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "ttl = \"60s\"\nstale_if_error = \"5m\"")).await;
    assert_eq!(get(&gw, "/sie", &[]).await.body, "good");
    let rescued = get(&gw, "/sie", &[]).await;
    assert_eq!(rescued.status, 200);
    assert_eq!(rescued.body, "good");
    let status = rescued.header("cache-status").unwrap();
    assert!(status.contains("fwd-status=503"), "{status}");
    assert!(status.contains("detail=stale-if-error"), "{status}");
    assert_eq!(
        origin.calls("/sie"),
        2,
        "the upstream was asked, and failed"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_by_tag_key_and_prefix() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "ttl = \"60s\"")).await;
    for path in ["/tagged/1", "/tagged/2", "/plain"] {
        get(&gw, path, &[]).await;
        get(&gw, path, &[]).await;
        assert_eq!(origin.calls(path), 1);
    }
    gw.gateway
        .cache_purge(&Purge::Tag("group-a".into()))
        .await
        .unwrap();
    get(&gw, "/tagged/1", &[]).await;
    get(&gw, "/tagged/2", &[]).await;
    assert_eq!(origin.calls("/tagged/1"), 2, "tag group-a purged");
    assert_eq!(origin.calls("/tagged/2"), 1, "group-b kept");

    let key = format!("c:v1:{}/plain", gw.address);
    gw.gateway.cache_purge(&Purge::Key(key)).await.unwrap();
    get(&gw, "/plain", &[]).await;
    assert_eq!(origin.calls("/plain"), 2);

    gw.gateway
        .cache_purge(&Purge::Prefix("c:v1:".into()))
        .await
        .unwrap();
    get(&gw, "/tagged/2", &[]).await;
    assert_eq!(origin.calls("/tagged/2"), 2, "the whole route purged");
    let (stats, keys) = gw.gateway.cache_stats(10).unwrap();
    assert_eq!(stats.entries, 1);
    assert_eq!(keys, [format!("c:v1:{}/tagged/2", gw.address)]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_redis_the_cache_keeps_working_in_process() {
    let origin = origin().await;
    // Nothing listens on port 1: every call to the shared tier fails at once.
    let config = config(&origin, "ttl = \"60s\"").replace(
        "[admin]",
        "[store]\nredis = \"redis://127.0.0.1:1\"\n[admin]",
    );
    let gw = InProcess::start(&config).await;
    for _ in 0..3 {
        let answer = get(&gw, "/plain", &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "/plain 1");
    }
    assert_eq!(origin.calls("/plain"), 1, "served from the in-process tier");
    let (stats, _) = gw.gateway.cache_stats(1).unwrap();
    assert!(!stats.shared);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_the_shared_tier_on_and_off_and_keeps_the_entries() {
    let origin = origin().await;
    let plain = config(&origin, "ttl = \"60s\"");
    let gw = InProcess::start(&plain).await;
    get(&gw, "/plain", &[]).await;
    assert!(!gw.gateway.cache_stats(1).unwrap().0.shared);

    let redis = std::env::var("SEKISHO_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let shared = plain.replace("[admin]", &format!("[store]\nredis = \"{redis}\"\n[admin]"));
    gw.gateway
        .reload_with(sekisho_config::parse(&shared, "test.toml").unwrap())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !gw.gateway.cache_stats(1).unwrap().0.subscribed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("shared and subscribed after the reload");

    gw.gateway
        .reload_with(sekisho_config::parse(&plain, "test.toml").unwrap())
        .unwrap();
    let (stats, _) = gw.gateway.cache_stats(1).unwrap();
    assert!(!stats.shared && !stats.subscribed, "in process only again");
    // The entry made before the reloads is still served from process memory.
    assert_eq!(get(&gw, "/plain", &[]).await.body, "/plain 1");
    assert_eq!(origin.calls("/plain"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_is_answered_from_the_stale_copy() {
    let origin = origin().await;
    let config = config(&origin, "ttl = \"60s\"\nstale_if_error = \"5m\"").replace(
        "[[routes]]",
        "[upstreams.app.circuit_breaker]\nwindow_calls = 10\n[[routes]]",
    );
    let gw = InProcess::start(&config).await;
    // Stored already stale (Age beyond max-age); the next call would go to the upstream.
    assert_eq!(get(&gw, "/swr", &[]).await.body, "v1");
    gw.gateway.circuit_action("app", "force_open").unwrap();
    let rescued = get(&gw, "/swr", &[]).await;
    assert_eq!(rescued.status, 200);
    assert_eq!(rescued.body, "v1");
    let status = rescued.header("cache-status").unwrap();
    assert!(status.contains("fwd-status=503"), "{status}");
    assert!(status.contains("detail=stale-if-error"), "{status}");
    assert_eq!(
        origin.calls("/swr"),
        1,
        "the open circuit kept the upstream out of it"
    );
    // Without a stale copy the circuit's own answer comes through.
    let cold = get(&gw, "/other", &[]).await;
    assert_eq!(cold.status, 503);
    assert_eq!(cold.error_code(), "CIRCUIT_OPEN");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_without_a_cached_route_says_so() {
    let origin = origin().await;
    let uncached = config(&origin, "").replace("[routes.cache]\n", "");
    let gw = InProcess::start(&uncached).await;
    let refused = gw.gateway.cache_purge(&Purge::Tag("any".into())).await;
    assert!(matches!(refused, Err(sekisho_gateway::PurgeError::NoCache)));
    assert!(gw.gateway.cache_stats(1).is_none());
    let answer = get(&gw, "/plain", &[]).await;
    assert!(
        answer.header("cache-status").is_none(),
        "no cache, no Cache-Status"
    );
    gw.stop().await;
}
