//! The response cache against an origin that speaks HTTP caching (RFC 9111, issue 19): only the
//! freshness the origin gives (or heuristic freshness when asked), L1 keeping an entry for its
//! freshness, revalidation with the origin's validators through the single flight, `no-cache`
//! and `must-revalidate`, the client's own conditional requests, `Expires`/`Date`/`Age`, and
//! invalidation by unsafe methods. Scripted origin over real sockets, gateway in process.
// The helpers outside the #[test] functions fail their test as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sekisho_testkit::{client, send, InProcess, Origin, Reply};

fn config(origin: &Origin, cache: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"c\"\npath_prefix = \"/\"\nupstream = \"app\"\ntimeout = \"1s\"\n\
         [routes.cache]\nttl_jitter = 0.0\n{cache}\n",
        origin.address
    )
}

fn http_date(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

fn header(head: &http::request::Parts, name: &str) -> Option<String> {
    head.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The origin every test uses: its answer depends on the path (and the request's validators).
async fn origin() -> Origin {
    Origin::start(|head, n| {
        let path = head.uri.path();
        let now = SystemTime::now();
        let day_ago = http_date(now - Duration::from_secs(86_400));
        let inm = header(head, "if-none-match");
        let ims = header(head, "if-modified-since");
        match path {
            "/plain" => Reply::new(200, format!("plain {n}")),
            "/max-age" => {
                Reply::new(200, format!("max-age {n}")).header("cache-control", "max-age=3600")
            }
            "/expires" => Reply::new(200, format!("expires {n}"))
                .header("expires", &http_date(now + Duration::from_secs(3600))),
            "/expires-invalid" => Reply::new(200, format!("invalid {n}")).header("expires", "0"),
            "/modified" => {
                Reply::new(200, format!("modified {n}")).header("last-modified", &day_ago)
            }
            // Date 100 s ago, no Age: its apparent age.
            "/dated" => Reply::new(200, "dated")
                .header("cache-control", "max-age=3600")
                .header("date", &http_date(now - Duration::from_secs(100))),
            "/conflicting" => Reply::new(200, format!("conflicting {n}"))
                .header("cache-control", "max-age=60")
                .header("cache-control", "max-age=120"),
            "/quoted" => Reply::new(200, format!("quoted {n}"))
                .header("cache-control", "no-cache=\"x-a, x-b\", max-age=\"60\"")
                .header("x-b", "withheld"),
            "/not-implemented" => {
                Reply::new(501, format!("no {n}")).header("cache-control", "max-age=60")
            }
            "/ranged" => match header(head, "range") {
                Some(_) => Reply::new(206, "234")
                    .header("content-range", "bytes 2-4/10")
                    .header("cache-control", "max-age=3600"),
                None => Reply::new(200, "0123456789")
                    .header("etag", "\"r1\"")
                    .header("cache-control", "max-age=3600"),
            },
            "/negotiated" => Reply::new(200, format!("negotiated {n}"))
                .header("vary", "Accept-Encoding")
                .header("cache-control", "max-age=3600"),
            // HEAD: the same validators and a longer freshness; GET: a new body (not expected
            // after the HEAD freshened the entry).
            "/headed" if head.method == http::Method::HEAD => Reply::new(200, "headed body")
                .header("etag", "\"h1\"")
                .header("x-version", "from-head")
                .header("cache-control", "max-age=3600"),
            "/headed" => Reply::new(200, if n == 1 { "headed body" } else { "refetched!!" })
                .header("etag", if n == 1 { "\"h1\"" } else { "\"h2\"" })
                .header("cache-control", "max-age=1")
                .header("age", "5"),
            "/replaced" if head.method == http::Method::HEAD => Reply::new(200, "other body!")
                .header("etag", "\"x2\"")
                .header("cache-control", "max-age=3600"),
            "/replaced" => Reply::new(200, format!("replaced {n}"))
                .header("etag", "\"x1\"")
                .header("cache-control", "max-age=1")
                .header("age", "5"),
            "/targeted" => Reply::new(200, format!("targeted {n}"))
                .header("cache-control", "no-store")
                .header("cdn-cache-control", "max-age=600"),
            "/withheld" => Reply::new(200, format!("withheld {n}"))
                .header(
                    "cache-control",
                    "private=\"Set-Cookie, X-User\", max-age=600",
                )
                .header("set-cookie", "session=alice")
                .header("x-user", "alice")
                .header("x-shared", "yes"),
            "/swr-etag" => match inm.as_deref() {
                Some("\"e1\"") => Reply::new(304, "")
                    .header("cache-control", "max-age=3600")
                    .header("x-version", "revalidated"),
                _ if n == 1 => Reply::new(200, "kept body")
                    .header("etag", "\"e1\"")
                    .header("cache-control", "max-age=1, stale-while-revalidate=60")
                    .header("age", "5"),
                _ => Reply::new(500, "revalidation expected"),
            },
            "/mismatch" => match (inm.as_deref(), n) {
                (Some(_), _) => Reply::new(304, "").header("etag", "\"b2\""),
                (None, 1) => Reply::new(200, "first")
                    .header("etag", "\"a1\"")
                    .header("cache-control", "max-age=1")
                    .header("age", "5"),
                (None, _) => Reply::new(200, "whole again").header("cache-control", "max-age=60"),
            },
            "/aged" => Reply::new(200, "aged")
                .header("cache-control", "max-age=3600")
                .header("age", "100"),
            // Stale on arrival (Age past max-age), with an ETag: revalidated next time.
            "/etag" => match inm.as_deref() {
                Some("\"v1\"") => Reply::new(304, "")
                    .header("cache-control", "max-age=3600")
                    .header("x-version", "updated")
                    .header("etag", "\"v1\""),
                Some(other) => Reply::new(500, format!("unexpected {other}")),
                None if n == 1 => Reply::new(200, "the whole body")
                    .header("etag", "\"v1\"")
                    .header("x-version", "first")
                    .header("cache-control", "max-age=1")
                    .header("age", "5"),
                None => Reply::new(500, "revalidation expected"),
            },
            "/slow-etag" => match inm.as_deref() {
                Some("\"s1\"") => Reply::new(304, "")
                    .header("cache-control", "max-age=3600")
                    .after(Duration::from_millis(150)),
                _ if n == 1 => Reply::new(200, "slow body")
                    .header("etag", "\"s1\"")
                    .header("cache-control", "max-age=1")
                    .header("age", "5"),
                _ => Reply::new(500, "revalidation expected"),
            },
            "/last-modified" => match ims {
                Some(_) => Reply::new(304, "").header("cache-control", "max-age=3600"),
                None if n == 1 => Reply::new(200, "dated body")
                    .header("last-modified", &day_ago)
                    .header("cache-control", "max-age=1")
                    .header("age", "5"),
                None => Reply::new(500, "revalidation expected"),
            },
            "/changed" => match (inm.as_deref(), n) {
                (None, 1) => Reply::new(200, "old")
                    .header("etag", "\"c1\"")
                    .header("cache-control", "max-age=1")
                    .header("age", "5"),
                (Some("\"c1\""), _) => Reply::new(200, "new")
                    .header("etag", "\"c2\"")
                    .header("cache-control", "max-age=3600"),
                _ => Reply::new(500, "unexpected"),
            },
            "/no-cache" => match inm.as_deref() {
                Some("\"n1\"") => Reply::new(304, "").header("cache-control", "no-cache"),
                _ => Reply::new(200, format!("no-cache {n}"))
                    .header("etag", "\"n1\"")
                    .header("cache-control", "no-cache"),
            },
            "/must-revalidate" if n == 1 => Reply::new(200, "strict")
                .header("etag", "\"m1\"")
                .header("cache-control", "max-age=1, must-revalidate")
                .header("age", "5"),
            "/stale-if-error-allowed" if n == 1 => Reply::new(200, "lenient")
                .header("etag", "\"m1\"")
                .header(
                    "cache-control",
                    "max-age=1, must-revalidate, stale-if-error=600",
                )
                .header("age", "5"),
            "/plain-stale" if n == 1 => Reply::new(200, "forgiving")
                .header("etag", "\"p1\"")
                .header("cache-control", "max-age=1")
                .header("age", "5"),
            // The origin hangs past the route's timeout: unreachable.
            // s-maxage implies proxy-revalidate in a shared cache (§5.2.2.10).
            "/s-maxage" if n == 1 => Reply::new(200, "shared")
                .header("etag", "\"s1\"")
                .header("cache-control", "s-maxage=1")
                .header("age", "5"),
            "/must-revalidate" | "/stale-if-error-allowed" | "/plain-stale" | "/s-maxage" => {
                Reply::new(200, "late").after(Duration::from_secs(5))
            }
            "/validated" => Reply::new(200, "validated")
                .header("etag", "W/\"w1\"")
                .header("last-modified", &day_ago)
                .header("cache-control", "max-age=3600"),
            p if p.starts_with("/items") => {
                if head.method == http::Method::POST {
                    if p == "/items/fail" {
                        return Reply::new(409, "conflict");
                    }
                    return Reply::new(201, "created")
                        .header("location", "/items/new")
                        .header(
                            "content-location",
                            &format!("http://{}/items/other", header(head, "host").unwrap()),
                        );
                }
                Reply::new(200, format!("{p} {n}")).header("cache-control", "max-age=3600")
            }
            _ => Reply::new(200, format!("{path} {n}")),
        }
    })
    .await
}

async fn get(gw: &InProcess, path: &str, headers: &[(&str, &str)]) -> sekisho_testkit::Answer {
    send(&client(), "GET", &gw.url(path), headers, Bytes::new()).await
}

fn cache_status(answer: &sekisho_testkit::Answer) -> String {
    answer.header("cache-status").unwrap_or("-").to_owned()
}

/// Issue 19, first bullet: without `ttl` only what the origin allows is stored; heuristic
/// freshness only when asked; `ttl` still forces a default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ttl_only_explicit_freshness_is_stored() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    for path in ["/max-age", "/expires"] {
        assert_eq!(get(&gw, path, &[]).await.status, 200);
        let again = get(&gw, path, &[]).await;
        assert!(
            cache_status(&again).contains("hit"),
            "{path}: {}",
            cache_status(&again)
        );
        assert_eq!(origin.calls(path), 1, "{path} stored");
    }
    for path in ["/plain", "/modified", "/expires-invalid"] {
        get(&gw, path, &[]).await;
        let again = get(&gw, path, &[]).await;
        assert!(cache_status(&again).contains("fwd=uri-miss"), "{path}");
        assert_eq!(origin.calls(path), 2, "{path} not stored");
    }
    gw.stop().await;

    let heuristic = InProcess::start(&config(&origin, "heuristic = true")).await;
    heuristic_stored(&heuristic, &origin, "/modified", 3).await;
    assert_eq!(get(&heuristic, "/plain", &[]).await.body, "plain 3");
    heuristic.stop().await;

    let forced = InProcess::start(&config(&origin, "ttl = \"60s\"")).await;
    get(&forced, "/plain", &[]).await;
    assert!(cache_status(&get(&forced, "/plain", &[]).await).contains("hit"));
    assert_eq!(origin.calls("/plain"), 4, "ttl forces a default");
    forced.stop().await;
}

async fn heuristic_stored(gw: &InProcess, origin: &Origin, path: &str, calls: u64) {
    get(gw, path, &[]).await;
    let again = get(gw, path, &[]).await;
    let status = cache_status(&again);
    assert!(status.contains("hit"), "{status}");
    // 10 % of a day, capped at the default day: 8640 s.
    assert!(status.contains("ttl=86"), "{status}");
    assert_eq!(origin.calls(path), calls);
}

/// Issue 19, second bullet: with `ttl = "1s"` and no L2, a `max-age=3600` answer is still a hit
/// after the `ttl` has passed (it used to be fetched again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_l2_an_entry_stays_in_process_for_its_freshness() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "ttl = \"1s\"\nl1_ttl = \"1s\"")).await;
    get(&gw, "/max-age", &[]).await;
    // The passage of time is what is tested here: past both the route's ttl and l1_ttl.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = get(&gw, "/max-age", &[]).await;
    assert!(
        cache_status(&later).contains("hit"),
        "{}",
        cache_status(&later)
    );
    assert_eq!(origin.calls("/max-age"), 1);
    gw.stop().await;
}

/// Issue 19, third bullet: a stale entry with an ETag is revalidated; the 304 updates the stored
/// fields and freshness, and the answer comes from the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    let first = get(&gw, "/etag", &[]).await;
    assert_eq!(first.body, "the whole body");
    let revalidated = get(&gw, "/etag", &[]).await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, "the whole body");
    assert_eq!(revalidated.header("x-version"), Some("updated"));
    let status = cache_status(&revalidated);
    assert!(
        status.contains("fwd=stale; fwd-status=304; stored"),
        "{status}"
    );
    let hit = get(&gw, "/etag", &[]).await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(hit.body, "the whole body");
    assert_eq!(hit.header("x-version"), Some("updated"));
    assert_eq!(origin.calls("/etag"), 2);
    let metrics = gw.gateway.encode_metrics();
    assert!(
        metrics.contains("sekisho_cache_lookups_total{route=\"c\",result=\"revalidated\"} 1"),
        "{metrics}"
    );

    // With Last-Modified only: If-Modified-Since.
    get(&gw, "/last-modified", &[]).await;
    let revalidated = get(&gw, "/last-modified", &[]).await;
    assert_eq!(revalidated.body, "dated body");
    assert!(cache_status(&revalidated).contains("fwd-status=304"));
    assert!(cache_status(&get(&gw, "/last-modified", &[]).await).contains("hit"));
    assert_eq!(origin.calls("/last-modified"), 2);

    // A changed resource: the new answer replaces the entry.
    get(&gw, "/changed", &[]).await;
    assert_eq!(get(&gw, "/changed", &[]).await.body, "new");
    assert_eq!(get(&gw, "/changed", &[]).await.body, "new");
    assert_eq!(origin.calls("/changed"), 2);
    gw.stop().await;
}

/// Revalidation goes through the single flight: 50 concurrent requests for a stale entry make
/// one conditional request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_stale_entry_make_one_revalidation() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    get(&gw, "/slow-etag", &[]).await;
    let http = client();
    let url = gw.url("/slow-etag");
    let answers = futures_util::future::join_all(
        (0..50).map(|_| send(&http, "GET", &url, &[], Bytes::new())),
    )
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "slow body");
    }
    assert_eq!(
        origin.calls("/slow-etag"),
        2,
        "one revalidation for 50 requests"
    );
    gw.stop().await;
}

/// `no-cache`: stored, and revalidated on every use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_is_stored_and_revalidated_on_every_use() {
    let origin = origin().await;
    let gw = InProcess::start(&config(
        &origin,
        "ttl = \"60s\"\nstale_while_revalidate = \"60s\"",
    ))
    .await;
    assert_eq!(get(&gw, "/no-cache", &[]).await.body, "no-cache 1");
    for calls in 2..5 {
        let answer = get(&gw, "/no-cache", &[]).await;
        assert_eq!(
            answer.body, "no-cache 1",
            "answered from the entry after a 304"
        );
        assert!(
            cache_status(&answer).contains("fwd-status=304"),
            "{}",
            cache_status(&answer)
        );
        assert_eq!(
            origin.calls("/no-cache"),
            calls,
            "each use asked the origin"
        );
    }
    gw.stop().await;
}

/// `must-revalidate`: a 504 rather than the stale copy when the origin cannot be reached, even
/// with the route's stale_if_error, unless the response itself allows `stale-if-error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_gets_504_rather_than_stale() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "stale_if_error = \"10m\"")).await;
    for path in [
        "/must-revalidate",
        "/stale-if-error-allowed",
        "/plain-stale",
        "/s-maxage",
    ] {
        assert_eq!(get(&gw, path, &[]).await.status, 200, "{path}");
    }
    assert_eq!(get(&gw, "/s-maxage", &[]).await.status, 504, "s-maxage");
    let strict = get(&gw, "/must-revalidate", &[]).await;
    assert_eq!(
        strict.status,
        504,
        "{}",
        String::from_utf8_lossy(&strict.body)
    );
    assert!(cache_status(&strict).contains("detail=must-revalidate"));
    let lenient = get(&gw, "/stale-if-error-allowed", &[]).await;
    assert_eq!(lenient.status, 200);
    assert_eq!(lenient.body, "lenient");
    assert!(cache_status(&lenient).contains("detail=stale-if-error"));
    let plain = get(&gw, "/plain-stale", &[]).await;
    assert_eq!(
        plain.body, "forgiving",
        "without must-revalidate the route's window applies"
    );
    gw.stop().await;
}

/// The client's own conditional requests answered from a fresh entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_conditionals_are_answered_from_a_fresh_entry() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    assert_eq!(get(&gw, "/validated", &[]).await.status, 200);
    let now = http_date(SystemTime::now());
    let long_ago = http_date(SystemTime::now() - Duration::from_secs(10 * 86_400));
    for (name, value, status) in [
        ("if-none-match", "\"w1\"", 304),
        ("if-none-match", "W/\"w1\"", 304),
        ("if-none-match", "\"w2\"", 200),
        ("if-modified-since", now.as_str(), 304),
        ("if-modified-since", long_ago.as_str(), 200),
        ("if-modified-since", "not a date", 200),
    ] {
        let answer = get(&gw, "/validated", &[(name, value)]).await;
        assert_eq!(answer.status, status, "{name}: {value}");
        assert!(cache_status(&answer).contains("hit"));
    }
    // If-None-Match wins over If-Modified-Since.
    let both = get(
        &gw,
        "/validated",
        &[("if-none-match", "\"w2\""), ("if-modified-since", &now)],
    )
    .await;
    assert_eq!(both.status, 200);
    assert_eq!(origin.calls("/validated"), 1);
    gw.stop().await;
}

/// `Age` from the origin counts, and so does the apparent age from `Date` (RFC 9111 §4.2.3);
/// ours includes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_includes_the_origins() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    for path in ["/aged", "/dated"] {
        get(&gw, path, &[]).await;
        let hit = get(&gw, path, &[]).await;
        let age: u64 = hit.header("age").unwrap().parse().unwrap();
        assert!((100..110).contains(&age), "{path}: {age}");
        let status = cache_status(&hit);
        let ttl: u64 = status
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (3490..=3500).contains(&ttl),
            "{path}: 3600 less 100 s of age: {status}"
        );
    }
    gw.stop().await;
}

/// A successful unsafe request invalidates the URL's entry and its same-origin `Location` and
/// `Content-Location`; a failed one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_invalidate() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    let http = client();
    for path in ["/items", "/items/new", "/items/other", "/items/fail"] {
        get(&gw, path, &[]).await;
        assert!(
            cache_status(&get(&gw, path, &[]).await).contains("hit"),
            "{path}"
        );
    }
    let posted = send(
        &http,
        "POST",
        &gw.url("/items"),
        &[],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(posted.status, 201);
    for path in ["/items", "/items/new", "/items/other"] {
        let again = get(&gw, path, &[]).await;
        assert!(
            cache_status(&again).contains("fwd=uri-miss"),
            "{path}: {}",
            cache_status(&again)
        );
        // The POST itself reached /items too.
        let calls = if path == "/items" { 3 } else { 2 };
        assert_eq!(origin.calls(path), calls, "{path}");
    }
    let failed = send(&http, "POST", &gw.url("/items/fail"), &[], Bytes::new()).await;
    assert_eq!(failed.status, 409);
    assert!(cache_status(&get(&gw, "/items/fail", &[]).await).contains("hit"));
    gw.stop().await;
}

/// What may be stored, per §3 and §5.2: conflicting `max-age`s make a response stale (not
/// stored without a validator, even with a route `ttl`), a quoted `no-cache` argument keeps its
/// comma (a qualified `no-cache`: stored without `x-a` and `x-b`), 501 is heuristically
/// cacheable, and a client's `Pragma` counts only without `Cache-Control`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_is_read_as_the_rfc_says() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "ttl = \"60s\"")).await;
    for (path, calls) in [("/conflicting", 2), ("/quoted", 1), ("/not-implemented", 1)] {
        get(&gw, path, &[]).await;
        get(&gw, path, &[]).await;
        assert_eq!(origin.calls(path), calls, "{path}");
    }
    assert_eq!(get(&gw, "/quoted", &[]).await.header("x-b"), None);
    get(&gw, "/max-age", &[]).await;
    let pragma = get(
        &gw,
        "/max-age",
        &[("pragma", "no-cache"), ("cache-control", "max-stale=10")],
    )
    .await;
    assert!(
        cache_status(&pragma).contains("hit"),
        "{}",
        cache_status(&pragma)
    );
    assert_eq!(origin.calls("/max-age"), 1);
    gw.stop().await;
}

/// Ranges: a partial upstream answer passes through unstored; a stored whole answer answers a
/// byte range with 206 and Content-Range (416 when unsatisfiable; the whole answer for several
/// ranges or an If-Range that does not match).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_answered_from_a_stored_whole_answer() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    let partial = get(&gw, "/ranged", &[("range", "bytes=2-4")]).await;
    assert_eq!(partial.status, 206);
    assert!(
        !cache_status(&partial).contains("stored"),
        "{}",
        cache_status(&partial)
    );
    let whole = get(&gw, "/ranged", &[]).await;
    assert_eq!(whole.status, 200);
    assert!(
        cache_status(&whole).contains("stored"),
        "{}",
        cache_status(&whole)
    );
    for (range, if_range, status, body, content_range) in [
        ("bytes=2-4", None, 206, "234", Some("bytes 2-4/10")),
        ("bytes=-3", None, 206, "789", Some("bytes 7-9/10")),
        ("bytes=7-", Some("\"r1\""), 206, "789", Some("bytes 7-9/10")),
        ("bytes=20-", None, 416, "", Some("bytes */10")),
        ("bytes=0-1,4-5", None, 200, "0123456789", None),
        ("bytes=2-4", Some("\"r0\""), 200, "0123456789", None),
    ] {
        let mut headers = vec![("range", range)];
        if let Some(if_range) = if_range {
            headers.push(("if-range", if_range));
        }
        let answer = get(&gw, "/ranged", &headers).await;
        assert_eq!(answer.status, status, "{range} {if_range:?}");
        assert_eq!(answer.body, body, "{range}");
        assert_eq!(answer.header("content-range"), content_range, "{range}");
        assert!(cache_status(&answer).contains("hit"));
    }
    assert_eq!(origin.calls("/ranged"), 2);
    gw.stop().await;
}

/// `Vary` matching with the normalisation §4.1 allows: `Accept-Encoding` elements in another
/// order, case, spacing or split over two lines select the same variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_matches_after_normalisation() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    get(&gw, "/negotiated", &[("accept-encoding", "gzip, br")]).await;
    for headers in [
        vec![("accept-encoding", "br,gzip")],
        vec![("accept-encoding", "GZIP ,  BR")],
        vec![("accept-encoding", "br"), ("accept-encoding", "gzip")],
    ] {
        let answer = get(&gw, "/negotiated", &headers).await;
        assert_eq!(answer.body, "negotiated 1", "{headers:?}");
    }
    let other = get(&gw, "/negotiated", &[("accept-encoding", "identity")]).await;
    assert_eq!(other.body, "negotiated 2");
    gw.stop().await;
}

/// A `HEAD` through the cache for a stale stored `GET` (§4.3.5): the same validators freshen
/// the entry with the `HEAD`'s fields; different ones invalidate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_freshens_or_invalidates_the_stored_get() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    let http = client();
    assert_eq!(get(&gw, "/headed", &[]).await.body, "headed body");
    let head = send(&http, "HEAD", &gw.url("/headed"), &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    let after = get(&gw, "/headed", &[]).await;
    assert!(
        cache_status(&after).contains("hit"),
        "{}",
        cache_status(&after)
    );
    assert_eq!(after.body, "headed body");
    assert_eq!(after.header("x-version"), Some("from-head"));

    get(&gw, "/replaced", &[]).await;
    send(&http, "HEAD", &gw.url("/replaced"), &[], Bytes::new()).await;
    let after = get(&gw, "/replaced", &[]).await;
    assert!(
        cache_status(&after).contains("fwd=uri-miss"),
        "{}",
        cache_status(&after)
    );
    gw.stop().await;
}

/// RFC 9213: with `targeted = ["CDN-Cache-Control"]` the targeted field decides (here: stored
/// for 600 s though `Cache-Control` says `no-store`); without it, `Cache-Control` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_cache_control_when_targeted() {
    let origin = origin().await;
    let plain = InProcess::start(&config(&origin, "")).await;
    get(&plain, "/targeted", &[]).await;
    get(&plain, "/targeted", &[]).await;
    assert_eq!(origin.calls("/targeted"), 2, "no-store obeyed");
    plain.stop().await;
    let cdn = InProcess::start(&config(&origin, "targeted = [\"CDN-Cache-Control\"]")).await;
    get(&cdn, "/targeted", &[]).await;
    let hit = get(&cdn, "/targeted", &[]).await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(origin.calls("/targeted"), 3);
    cdn.stop().await;
}

/// Qualified `private="…"` (§5.2.2.7): stored without the named fields, so one user's cookie
/// never reaches another while the rest is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qualified_private_is_stored_without_its_fields() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    let first = get(&gw, "/withheld", &[]).await;
    assert!(
        cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    let hit = get(&gw, "/withheld", &[]).await;
    assert!(cache_status(&hit).contains("hit"));
    assert_eq!(hit.body, "withheld 1");
    assert_eq!(hit.header("set-cookie"), None);
    assert_eq!(hit.header("x-user"), None);
    assert_eq!(hit.header("x-shared"), Some("yes"));
    gw.stop().await;
}

/// Stale-while-revalidate with a validator: the stale copy answers at once, and the background
/// refresh is a conditional request whose 304 freshens the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_revalidates_too() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    get(&gw, "/swr-etag", &[]).await;
    let stale = get(&gw, "/swr-etag", &[]).await;
    assert_eq!(stale.body, "kept body");
    assert!(cache_status(&stale).contains("detail=stale-while-revalidate"));
    let refreshed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = get(&gw, "/swr-etag", &[]).await;
            if answer.header("x-version") == Some("revalidated") {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the 304 freshened the entry");
    assert_eq!(refreshed.body, "kept body");
    assert!(cache_status(&refreshed).contains("hit"));
    assert_eq!(origin.calls("/swr-etag"), 2);
    gw.stop().await;
}

/// A 304 naming another representation (another strong ETag) does not update the stored one
/// (§4.3.4): the request fails as an upstream error and the entry goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_for_another_representation_updates_nothing() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    assert_eq!(get(&gw, "/mismatch", &[]).await.body, "first");
    let mismatched = get(&gw, "/mismatch", &[]).await;
    assert_eq!(mismatched.status, 502);
    let again = get(&gw, "/mismatch", &[]).await;
    assert_eq!(again.body, "whole again");
    assert!(
        cache_status(&again).contains("fwd=uri-miss"),
        "{}",
        cache_status(&again)
    );
    gw.stop().await;
}

/// The client's own limits (§5.2.1.1 `max-age`, §5.2.1.3 `min-fresh`): an entry older, or fresh
/// for less, than asked is revalidated rather than served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_max_age_and_min_fresh_are_honoured() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    get(&gw, "/aged", &[]).await;
    let young_enough = get(&gw, "/aged", &[("cache-control", "max-age=500")]).await;
    assert!(cache_status(&young_enough).contains("hit"));
    let too_old = get(&gw, "/aged", &[("cache-control", "max-age=50")]).await;
    assert!(
        cache_status(&too_old).contains("fwd=request"),
        "{}",
        cache_status(&too_old)
    );
    assert_eq!(origin.calls("/aged"), 2);
    get(&gw, "/max-age", &[]).await;
    let fresh_enough = get(&gw, "/max-age", &[("cache-control", "min-fresh=60")]).await;
    assert!(cache_status(&fresh_enough).contains("hit"));
    let not_for_long = get(&gw, "/max-age", &[("cache-control", "min-fresh=4000")]).await;
    assert!(cache_status(&not_for_long).contains("fwd=request"));
    assert_eq!(origin.calls("/max-age"), 2);
    gw.stop().await;
}

/// The client's `max-stale` (§5.2.1.2): a stale entry within it is served, unless the response
/// demands revalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_max_stale_is_honoured() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    get(&gw, "/plain-stale", &[]).await;
    let tolerated = get(&gw, "/plain-stale", &[("cache-control", "max-stale=600")]).await;
    assert_eq!(tolerated.body, "forgiving");
    assert!(
        cache_status(&tolerated).contains("detail=max-stale"),
        "{}",
        cache_status(&tolerated)
    );
    let any = get(&gw, "/plain-stale", &[("cache-control", "max-stale")]).await;
    assert_eq!(any.body, "forgiving");
    assert_eq!(origin.calls("/plain-stale"), 1);
    get(&gw, "/must-revalidate", &[]).await;
    let strict = get(&gw, "/must-revalidate", &[("cache-control", "max-stale")]).await;
    assert_eq!(strict.status, 504, "must-revalidate wins over max-stale");
    gw.stop().await;
}

/// The client's `only-if-cached` (§5.2.1.7): a stored answer, or 504 without asking the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_never_reaches_the_origin() {
    let origin = origin().await;
    let gw = InProcess::start(&config(&origin, "")).await;
    let only = [("cache-control", "only-if-cached")];
    let cold = get(&gw, "/max-age", &only).await;
    assert_eq!(cold.status, 504);
    assert!(cache_status(&cold).contains("detail=only-if-cached"));
    assert_eq!(origin.calls("/max-age"), 0);
    get(&gw, "/max-age", &[]).await;
    let warm = get(&gw, "/max-age", &only).await;
    assert_eq!(warm.status, 200);
    assert!(cache_status(&warm).contains("hit"));
    assert_eq!(origin.calls("/max-age"), 1);
    gw.stop().await;
}
