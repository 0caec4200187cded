//! The data plane against real upstreams over real sockets: routing, forwarding, streaming,
//! limits, smuggling, slowloris, upstream failures, HTTP/2, reload.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sekisho_load::ChaosState;
use sekisho_testkit::{
    chaos_upstream, client, get, h2_client, raw_body, raw_exchange, raw_exchange_until_end,
    raw_status, send, InProcess, RawEnd, Upstream,
};

async fn upstream(name: &str) -> Upstream {
    chaos_upstream(name).await
}

async fn gateway(config: &str) -> InProcess {
    InProcess::start(config).await
}

/// One upstream `up` at `target` behind one route `r` on `/`.
fn one_route(extra_server: &str, target: SocketAddr, extra_route: &str) -> String {
    format!(
        "{}\n[upstreams.up]\ntargets = [\"{target}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\n{extra_route}",
        base(extra_server)
    )
}

fn base(extra_server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n{extra_server}\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_prefix_exact_path_method_host_and_header() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let config = format!(
        r#"{}
[upstreams.a]
targets = ["{}"]
[upstreams.b]
targets = ["{}"]
[upstreams.c]
targets = ["{}"]

[[routes]]
name = "canary"
path_prefix = "/api"
upstream = "c"
match_headers = {{ "X-Canary" = "1" }}

[[routes]]
name = "export"
path = "/api/orders/export"
upstream = "b"

[[routes]]
name = "writes"
path_prefix = "/api/orders"
methods = ["POST"]
upstream = "b"

[[routes]]
name = "orders"
path_prefix = "/api/orders"
upstream = "a"
strip_prefix = true

[[routes]]
name = "admin-host"
path_prefix = "/"
host = "*.internal.example"
upstream = "c"
"#,
        base(""),
        a.address,
        b.address,
        c.address
    );
    let gw = gateway(&config).await;
    let http = client();

    let answer = get(&gw.url("/api/orders/7?x=1")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-upstream"), Some("a"));
    let echoed = answer.json();
    assert_eq!(echoed["path"], "/7", "strip_prefix");
    assert_eq!(echoed["query"], "x=1");

    let answer = get(&gw.url("/api/orders")).await;
    assert_eq!(answer.json()["path"], "/", "the bare prefix becomes /");

    let answer = get(&gw.url("/api/orders/export")).await;
    assert_eq!(answer.header("x-upstream"), Some("b"), "exact path");

    let answer = send(&http, "POST", &gw.url("/api/orders/1"), &[], "{}").await;
    assert_eq!(answer.header("x-upstream"), Some("b"), "method");

    let answer = send(
        &http,
        "GET",
        &gw.url("/api/orders/1"),
        &[("x-canary", "1")],
        "",
    )
    .await;
    assert_eq!(answer.header("x-upstream"), Some("c"), "header");

    let answer = send(
        &http,
        "GET",
        &gw.url("/anything"),
        &[("host", "ops.internal.example:8080")],
        "",
    )
    .await;
    assert_eq!(answer.header("x-upstream"), Some("c"), "host suffix");

    let answer = get(&gw.url("/api/ordersx")).await;
    assert_eq!(answer.status, 404, "prefixes stop at segment boundaries");
    assert_eq!(answer.error_code(), "NO_ROUTE");
    let body = answer.json();
    assert_eq!(body["status"], "error");
    assert_eq!(
        body["error"]["request_id"].as_str(),
        answer.header("x-request-id"),
        "the error names the request id it answers with"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_the_client_and_rewrites_headers() {
    let up = upstream("up").await;
    let config = format!(
        r#"{}
[upstreams.up]
targets = ["{}"]
[[routes]]
name = "r"
path_prefix = "/"
upstream = "up"
[routes.headers]
request_set = {{ "X-Env" = "test" }}
request_remove = ["Cookie"]
response_set = {{ "Cache-Control" = "no-store" }}
response_remove = ["X-Upstream"]
"#,
        base(""),
        up.address
    );
    let gw = gateway(&config).await;
    let answer = send(
        &client(),
        "GET",
        &gw.url("/p"),
        &[
            ("x-request-id", "req-42"),
            ("x-forwarded-for", "203.0.113.7"),
            ("cookie", "session=secret"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("host", "shop.example:8080"),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-request-id"), Some("req-42"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("x-upstream"), None);
    let seen = answer.json()["headers"].clone();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example:8080");
    assert_eq!(
        seen["forwarded"],
        "for=127.0.0.1;proto=http;host=\"shop.example:8080\""
    );
    assert_eq!(
        seen["host"], "shop.example:8080",
        "the client's Host is kept"
    );
    assert_eq!(seen["x-request-id"], "req-42");
    assert_eq!(seen["x-env"], "test");
    assert!(seen.get("cookie").is_none());
    assert!(
        seen.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );

    // A first hop (no forwarding fields of its own): the same fields, written with the head.
    let answer = get(&gw.url("/p")).await;
    let made = answer.header("x-request-id").unwrap().to_owned();
    assert_eq!(made.len(), 32);
    let seen = answer.json()["headers"].clone();
    assert_eq!(seen["x-request-id"], made.as_str());
    let authority = gw.address.to_string();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], authority.as_str());
    assert_eq!(
        seen["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{authority}\"").as_str()
    );
    assert_eq!(seen["x-env"], "test");

    // A `Host` that `Connection` names goes as hop-by-hop, and the host the client asked for is
    // set again: the upstream always gets one.
    let answer = send(
        &client(),
        "GET",
        &gw.url("/p"),
        &[("connection", "host"), ("host", "named.example")],
        "",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["headers"]["host"], "named.example");
    gw.stop().await;
}

/// The gateway remembers a connection's last `Forwarded` value per host: requests on one
/// keep-alive connection that name other hosts, or arrive with a `Forwarded` of their own, must
/// still get theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_follows_each_request_on_one_connection() {
    let up = upstream("up").await;
    let gw = gateway(&one_route("", up.address, "")).await;
    let address = gw.address;
    let exchange = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = Vec::new();
        for (host, extra) in [
            ("a.example", ""),
            ("a.example", ""),
            ("b.example:81", ""),
            ("b.example:81", "Forwarded: for=192.0.2.1\r\n"),
            ("a.example", ""),
        ] {
            let request = format!("GET /p HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
            std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
            let answer = sekisho_testkit::read_response(&mut stream)
                .unwrap()
                .unwrap();
            let body: serde_json::Value = serde_json::from_str(raw_body(&answer)).unwrap();
            seen.push(body["headers"]["forwarded"].as_str().unwrap().to_owned());
        }
        seen
    })
    .await
    .unwrap();
    assert_eq!(
        exchange,
        [
            "for=127.0.0.1;proto=http;host=\"a.example\"",
            "for=127.0.0.1;proto=http;host=\"a.example\"",
            "for=127.0.0.1;proto=http;host=\"b.example:81\"",
            "for=192.0.2.1, for=127.0.0.1;proto=http;host=\"b.example:81\"",
            "for=127.0.0.1;proto=http;host=\"a.example\"",
        ]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let up = upstream("up").await;
    let config = one_route("", up.address, "max_body_bytes = 67108864\n");
    let gw = gateway(&config).await;
    let size = 24 * 1024 * 1024;
    let answer = get(&gw.url(&format!("/bytes/{size}"))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), size);

    let upload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let answer = send(
        &client(),
        "POST",
        &gw.url("/echo"),
        &[("content-type", "application/octet-stream")],
        Bytes::from(upload.clone()),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer.body == upload, "the echo came back changed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_header_limits_answer_413_and_431() {
    let up = upstream("up").await;
    let config = one_route(
        "max_body_bytes = 1024\nmax_header_bytes = 2048",
        up.address,
        "",
    );
    let gw = gateway(&config).await;
    let answer = send(&client(), "POST", &gw.url("/"), &[], vec![b'x'; 4096]).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.error_code(), "PAYLOAD_TOO_LARGE");

    // Chunked: no length to check up front; the limit stops the stream on its way up. The
    // upstream waits before answering, so the gateway's 413 comes first.
    up.handle.set(ChaosState {
        latency_ms: 2_000,
        ..ChaosState::default()
    });
    let mut raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..8 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'y'; 0x200]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(gw.address, &raw, Duration::from_secs(10));
    assert_eq!(raw_status(&answer), Some(413), "{answer}");
    assert!(raw_body(&answer).contains("PAYLOAD_TOO_LARGE"), "{answer}");
    up.handle.set(ChaosState::default());

    let big = "v".repeat(3000);
    let answer = send(&client(), "GET", &gw.url("/"), &[("x-big", &big)], "").await;
    assert_eq!(answer.status, 431);
    assert_eq!(answer.error_code(), "HEADERS_TOO_LARGE");

    // Far beyond the limit hyper stops reading; the answer is still the contract's JSON.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(200_000)
    );
    let answer = raw_exchange(gw.address, huge.as_bytes(), Duration::from_secs(10));
    assert_eq!(raw_status(&answer), Some(431), "{answer}");
    assert!(raw_body(&answer).contains("HEADERS_TOO_LARGE"), "{answer}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_attempts_are_refused_with_400() {
    let up = upstream("up").await;
    let config = one_route("", up.address, "");
    let gw = gateway(&config).await;
    // The upstream holds its answer, so a body error on the way up is seen before any answer.
    up.handle.set(ChaosState {
        latency_ms: 2_000,
        ..ChaosState::default()
    });
    let attempts: [&[u8]; 4] = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ];
    for attempt in attempts {
        let answer = raw_exchange(gw.address, attempt, Duration::from_secs(10));
        assert_eq!(
            raw_status(&answer),
            Some(400),
            "{}\n→ {answer}",
            String::from_utf8_lossy(attempt)
        );
        assert!(raw_body(&answer).contains("BAD_REQUEST"), "{answer}");
    }
    assert_eq!(
        up.handle.requests(),
        0,
        "no smuggled request reached the upstream"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_is_cut_but_an_idle_keepalive_lives_until_idle_timeout() {
    let up = upstream("up").await;
    let config = one_route(
        "header_read_timeout = \"300ms\"\nidle_timeout = \"2s\"",
        up.address,
        "",
    );
    let gw = gateway(&config).await;
    // Slowloris: a head that never ends is closed without an answer, soon after the 300 ms
    // header_read_timeout. The reader waits far longer (10 s) on its own, so a gateway that
    // never closes is told apart from one that does; the bound on the close (2 s past the
    // timeout) only has to be generous enough for a loaded machine.
    let address = gw.address;
    let exchange = tokio::task::spawn_blocking(move || {
        raw_exchange_until_end(
            address,
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n",
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap();
    assert_ne!(
        exchange.end,
        RawEnd::TimedOut,
        "the gateway never closed the stalled head: {exchange:?}"
    );
    assert_eq!(
        exchange.answer, "",
        "the stalled head got no answer: {exchange:?}"
    );
    assert!(
        exchange.after <= Duration::from_millis(300) + Duration::from_secs(2),
        "closed only {:?} after the head stalled",
        exchange.after
    );

    // Idle longer than header_read_timeout between two requests on one connection: kept.
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(gw.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    for round in 0..2 {
        stream.write_all(request).unwrap();
        let response = sekisho_testkit::read_response(&mut stream)
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
            .unwrap_or_else(|| panic!("round {round}: closed"));
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        // Idle between requests for longer than header_read_timeout, shorter than idle_timeout.
        std::thread::sleep(Duration::from_millis(800));
    }
    // Then idle past idle_timeout: the gateway closes it.
    let mut buffer = [0u8; 16];
    let closed_at = stream.read(&mut buffer).unwrap();
    assert_eq!(closed_at, 0, "the idle connection was closed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_502_and_504() {
    let up = upstream("up").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_address = dead.local_addr().unwrap();
    drop(dead);
    let config = format!(
        r#"{}
[upstreams.up]
targets = ["{}"]
[upstreams.dead]
targets = ["{}"]
[[routes]]
name = "dead"
path_prefix = "/dead"
upstream = "dead"
[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "up"
timeout = "300ms"
[[routes]]
name = "r"
path_prefix = "/"
upstream = "up"
"#,
        base(""),
        up.address,
        dead_address
    );
    let gw = gateway(&config).await;
    let answer = get(&gw.url("/dead")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.error_code(), "UPSTREAM_ERROR");

    up.handle.set(ChaosState {
        latency_ms: 3_000,
        ..ChaosState::default()
    });
    let answer = get(&gw.url("/slow")).await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.error_code(), "UPSTREAM_TIMEOUT");

    up.handle.set(ChaosState {
        reset: true,
        ..ChaosState::default()
    });
    let answer = get(&gw.url("/x")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.error_code(), "UPSTREAM_ERROR");

    up.handle.set(ChaosState {
        error_rate: 1.0,
        ..ChaosState::default()
    });
    let answer = get(&gw.url("/x")).await;
    assert_eq!(answer.status, 500, "an upstream's own 500 passes through");
    assert!(answer.header("x-upstream").is_some());
    gw.stop().await;
}

/// A connection's calls share one deadline timer, set again for each (`ClientInfo::
/// deadline_timer`): each request still ends at its own route's deadline — an earlier one than
/// the last request's, and a later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_connection_ends_at_its_own_deadline() {
    let up = upstream("up").await;
    let config = format!(
        "{}\n[upstreams.up]\ntargets = [\"{}\"]\n\
         [[routes]]\nname = \"short\"\npath_prefix = \"/short\"\nupstream = \"up\"\ntimeout = \"300ms\"\n\
         [[routes]]\nname = \"long\"\npath_prefix = \"/long\"\nupstream = \"up\"\ntimeout = \"30s\"\n",
        base(""),
        up.address
    );
    let gw = gateway(&config).await;
    let address = gw.address;
    let mut stream = tokio::task::spawn_blocking(move || {
        let stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    })
    .await
    .unwrap();
    for (path, latency_ms, status) in [
        ("/long", 0, 200),
        // Earlier than the last one's: 504 at 300 ms, not the upstream's 200 after 1.5 s.
        ("/short", 1_500, 504),
        ("/long", 0, 200),
        // Later than the last one's: not cut at the short route's deadline.
        ("/long", 600, 200),
        ("/short", 1_500, 504),
    ] {
        up.handle.set(ChaosState {
            latency_ms,
            ..ChaosState::default()
        });
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            let answer = sekisho_testkit::read_response(&mut stream).unwrap();
            (stream, answer)
        })
        .await
        .unwrap();
        stream = answer.0;
        let answer = answer.1.expect("the connection stays open");
        assert_eq!(raw_status(&answer), Some(status), "{path}: {answer}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_and_h2c_upstreams() {
    let up = upstream("up").await;
    let config = format!(
        "{}\n[upstreams.up]\ntargets = [\"{}\"]\nprotocol = \"h2c\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
        base(""),
        up.address
    );
    let gw = gateway(&config).await;
    let h2 = h2_client();
    for _ in 0..3 {
        let answer = send(&h2, "GET", &gw.url("/h2?q=1"), &[], "").await;
        assert_eq!(answer.status, 200);
        let echoed = answer.json();
        assert_eq!(echoed["path"], "/h2");
        assert!(echoed["headers"]["host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
    let answer = get(&gw.url("/h1")).await;
    assert_eq!(answer.status, 200, "HTTP/1.1 clients on the same listener");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_routes_for_new_requests_only() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let template = |target: SocketAddr| {
        format!(
            "{}\n[upstreams.u]\ntargets = [\"{target}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\ntimeout = \"10s\"\n",
            base("")
        )
    };
    let gw = gateway(&template(a.address)).await;
    a.handle.set(ChaosState {
        latency_ms: 500,
        ..ChaosState::default()
    });
    let slow = tokio::spawn({
        let url = gw.url("/in-flight");
        async move { get(&url).await }
    });
    // Wait until the slow request is inside upstream a, then reload towards b.
    while a.handle.requests() == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let new_config = sekisho_config::parse(&template(b.address), "t.toml").unwrap();
    let summary = gw.gateway.reload_with(new_config).unwrap();
    assert_eq!(summary.generation, 2);
    let answer = get(&gw.url("/after")).await;
    assert_eq!(answer.header("x-upstream"), Some("b"));
    let finished = slow.await.unwrap();
    assert_eq!(finished.status, 200);
    assert_eq!(
        finished.header("x-upstream"),
        Some("a"),
        "the request in flight finished on the config it started with"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_request_in_flight() {
    let up = upstream("up").await;
    let config = one_route("", up.address, "");
    let gw = gateway(&config).await;
    up.handle.set(ChaosState {
        latency_ms: 400,
        ..ChaosState::default()
    });
    let in_flight = tokio::spawn({
        let url = gw.url("/drain");
        async move { get(&url).await }
    });
    while up.handle.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let address = gw.address;
    gw.stop().await;
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "the request in flight was finished");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watch_sees_a_change_back_after_a_reload_by_other_means() {
    // A → B (reloaded by API or signal before the watch looks) → A again: the watch must
    // compare with what was last loaded (B), not with what it last saw itself (A).
    let dir = sekisho_testkit::TempDir::new("watch-aba");
    let path = dir.write("sekisho.toml", &watched_config(1001));
    let gateway = gateway_from_file(&path);
    let watching = gateway.clone();
    let watch =
        tokio::spawn(async move { watching.watch_config_file(Duration::from_millis(20)).await });
    let target_of =
        |gateway: &sekisho_gateway::Gateway| gateway.upstreams()[0].targets[0].address.clone();
    dir.write("sekisho.toml", &watched_config(1002));
    gateway.reload().unwrap();
    dir.write("sekisho.toml", &watched_config(1001));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while target_of(&gateway) != "127.0.0.1:1001" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch never reloaded the file changed back to A"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watch.abort();
}

/// A config whose one upstream is `127.0.0.1:{port}`, for the file-watch tests.
fn watched_config(port: u16) -> String {
    format!(
        "{}\n[upstreams.u]\ntargets = [\"127.0.0.1:{port}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        base("")
    )
}

/// A gateway started from the file at `path`, told the bytes it was made of (as the binary
/// does), so the file watch compares against them from the start.
fn gateway_from_file(path: &std::path::Path) -> sekisho_gateway::Gateway {
    let (config, bytes) = sekisho_config::load_with_contents(path).unwrap();
    let gateway = sekisho_gateway::Gateway::new(config, Some(path.to_owned())).unwrap();
    gateway.loaded_file_contents(bytes);
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_before_the_watchs_first_look_is_reloaded() {
    // The file changes between the start and the watch's first look (a deploy writing the file
    // right after a restart): the watch compares with what was loaded, so it reloads.
    let dir = sekisho_testkit::TempDir::new("watch-early");
    let path = dir.write("sekisho.toml", &watched_config(1001));
    let gateway = gateway_from_file(&path);
    dir.write("sekisho.toml", &watched_config(1002));
    let watching = gateway.clone();
    let watch =
        tokio::spawn(async move { watching.watch_config_file(Duration::from_millis(20)).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gateway.status().generation < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch took the changed file as its starting point and never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gateway.upstreams()[0].targets[0].address, "127.0.0.1:1002");
    watch.abort();
}

/// An answer whose body stalls after its head is cut at the route's deadline: the client sees
/// the connection end (the body incomplete) instead of waiting on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_cut_at_the_route_deadline() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buffer = [0u8; 4096];
        let _ = stream.read(&mut buffer).await;
        // Ten bytes announced, two sent, then nothing.
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok")
            .await;
        std::future::pending::<()>().await;
        drop(stream);
    });
    let gw = gateway(&one_route("", target, "timeout = \"300ms\"\n")).await;
    let address = gw.address;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        // Far beyond the deadline: a read that times out means the body was not cut.
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        std::io::Write::write_all(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut stream, &mut chunk) {
                Ok(0) => break Ok(answer),
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(error) => break Err(error.kind()),
            }
        }
    })
    .await
    .unwrap()
    .expect("the connection should end at the deadline");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("\r\n\r\nok"),
        "the body is cut short: {text}"
    );
    gw.stop().await;
}

/// A request head with `count` header fields besides Host.
fn head_with_fields(count: usize) -> Vec<u8> {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for n in 0..count {
        head.push_str(&format!("X-Field-{n}: {n}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    head.into_bytes()
}

/// An upstream that answers 200 to any head, however many fields it has (hyper's own servers
/// stop at 100).
async fn any_head_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&chunk[..read]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_fields_beyond_max_header_count_are_refused_with_431() {
    let target = any_head_upstream().await;
    // The default: 100 fields in all.
    let gw = gateway(&one_route("", target, "")).await;
    let answer = raw_exchange(gw.address, &head_with_fields(97), Duration::from_secs(10));
    assert_eq!(raw_status(&answer), Some(200), "{answer}");
    let answer = raw_exchange(gw.address, &head_with_fields(120), Duration::from_secs(10));
    assert_eq!(raw_status(&answer), Some(431), "{answer}");
    assert!(raw_body(&answer).contains("HEADERS_TOO_LARGE"), "{answer}");
    gw.stop().await;
    // A larger count, asked for.
    let gw = gateway(&one_route("max_header_count = 200", target, "")).await;
    let answer = raw_exchange(gw.address, &head_with_fields(150), Duration::from_secs(10));
    assert_eq!(raw_status(&answer), Some(200), "{answer}");
    let answer = raw_exchange(gw.address, &head_with_fields(210), Duration::from_secs(10));
    assert_eq!(raw_status(&answer), Some(431), "{answer}");
    assert!(raw_body(&answer).contains("HEADERS_TOO_LARGE"), "{answer}");
    gw.stop().await;
}
