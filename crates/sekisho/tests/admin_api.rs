//! The admin side's own rules (issue 17): the dashboard's page and its event stream, the token
//! on every `/api` path with a lockout after repeated wrong tokens, and the viewers counted and
//! released. Against a real `sekisho run` and a chaos upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sekisho_testkit::{chaos_upstream, client, send, Sekisho, TempDir};

const TOKEN: &str = "admin-api-token";

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

async fn gateway(dir: &TempDir) -> Sekisho {
    let upstream = chaos_upstream("app").await;
    let config = dir.write(
        "sekisho.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [upstreams.app]\ntargets = [\"{}\"]\n\
             [upstreams.app.circuit_breaker]\nminimum_calls = 5\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
            upstream.address
        ),
    );
    // The upstream serves from a task of the test's runtime, whatever becomes of its handle.
    Sekisho::start(&binary(), &config)
}

/// An open event stream: reads until `wanted` has arrived in full (≤ 10 s), returns all read.
struct Stream {
    body: hyper::body::Incoming,
    read: String,
}

impl Stream {
    async fn open(url: &str, token: &str) -> (u16, Option<Self>) {
        let request = http::Request::get(url)
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client().request(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        if status != 200 {
            return (status, None);
        }
        assert_eq!(
            content_type.as_deref(),
            Some("text/event-stream; charset=utf-8")
        );
        let body = response.into_body();
        (
            status,
            Some(Self {
                body,
                read: String::new(),
            }),
        )
    }

    /// Reads until the stream holds `count` complete events named `name`.
    async fn until(&mut self, name: &str, count: usize) -> Vec<serde_json::Value> {
        let header = format!("event: {name}\ndata: ");
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let events: Vec<serde_json::Value> = self
                    .read
                    .split("\n\n")
                    .filter_map(|block| block.strip_prefix(header.as_str()))
                    .filter_map(|data| serde_json::from_str(data).ok())
                    .collect();
                if events.len() >= count {
                    return events;
                }
                let frame = self.body.frame().await.expect("the stream ended").unwrap();
                if let Ok(data) = frame.into_data() {
                    self.read.push_str(std::str::from_utf8(&data).unwrap());
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {count} `{name}` events within 10 s: {}", self.read))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_whole_and_the_stream_needs_the_token_and_counts_its_viewers() {
    let dir = TempDir::new("admin-api-stream");
    let gateway = gateway(&dir).await;
    let http = client();

    // The page and its files: no token needed, served with a closed CSP.
    let page = send(&http, "GET", &gateway.admin_url("/"), &[], Bytes::new()).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    let html = String::from_utf8_lossy(&page.body);
    for file in ["/dashboard.js", "/dashboard.css"] {
        assert!(html.contains(file), "{html}");
        let asset = send(&http, "GET", &gateway.admin_url(file), &[], Bytes::new()).await;
        assert_eq!(asset.status, 200, "{file}");
        assert!(!asset.body.is_empty());
    }
    // No file from anywhere else.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    let stream_url = gateway.admin_url("/api/v1/stream");
    let (status, _) = Stream::open(&stream_url, "wrong").await;
    assert_eq!(status, 401);

    let (status, first) = Stream::open(&stream_url, TOKEN).await;
    assert_eq!(status, 200);
    let mut first = first.unwrap();
    assert!(first.until("history", 1).await[0].is_array());
    let (_, second) = Stream::open(&stream_url, TOKEN).await;
    let mut second = second.unwrap();
    // Snapshots come once a second; within a few the second viewer is counted.
    let mut seen = 0;
    for count in 1..=5 {
        let snapshots = second.until("snapshot", count).await;
        let latest = snapshots.last().unwrap();
        assert_eq!(latest["upstreams"][0]["name"], "app");
        assert_eq!(latest["circuits"][0]["name"], "app");
        seen = latest["viewers"].as_u64().unwrap();
        if seen == 2 {
            break;
        }
    }
    assert_eq!(seen, 2, "both streams counted");
    let both = first.until("snapshot", 1).await;
    assert!(both[0]["status"].is_string());

    // Traffic after a snapshot shows in the next ones: rate, error rate, percentiles.
    for _ in 0..5 {
        let answer = send(&http, "GET", &gateway.url("/x"), &[], Bytes::new()).await;
        assert_eq!(answer.status, 200);
    }
    let taken = second.until("snapshot", 1).await.len();
    let mut figures = serde_json::Value::Null;
    for count in taken + 1..=taken + 5 {
        let snapshots = second.until("snapshot", count).await;
        let upstream = &snapshots.last().unwrap()["upstreams"][0];
        if upstream["requests_per_second"].as_f64().unwrap() > 0.0 {
            figures = upstream.clone();
            break;
        }
    }
    assert!(figures["p50_ms"].as_f64().unwrap() > 0.0, "{figures}");
    assert!(figures["p99_ms"].as_f64().unwrap() >= figures["p50_ms"].as_f64().unwrap());
    assert_eq!(figures["error_rate"], 0.0);
    assert_eq!(figures["state"], "healthy");

    // A viewer that goes away is no longer counted.
    drop(first);
    let mut counted = 2;
    for count in 1..=10 {
        let snapshots = second.until("snapshot", count).await;
        counted = snapshots.last().unwrap()["viewers"].as_u64().unwrap();
        if counted == 1 {
            break;
        }
    }
    assert_eq!(counted, 1, "the closed stream was released");

    // The same snapshot, without streaming.
    let auth = format!("Bearer {TOKEN}");
    let latest = send(
        &http,
        "GET",
        &gateway.admin_url("/api/v1/dashboard"),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(latest.status, 200);
    assert_eq!(latest.json()["upstreams"][0]["state"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_lock_the_address_out_for_a_while_even_with_the_right_one() {
    let dir = TempDir::new("admin-api-lockout");
    let gateway = gateway(&dir).await;
    let http = client();
    let url = gateway.admin_url("/api/v1/upstreams");
    for attempt in 1..=10 {
        let answer = send(
            &http,
            "GET",
            &url,
            &[("authorization", "Bearer guess")],
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.status, 401, "attempt {attempt}");
        assert_eq!(answer.error_code(), "UNAUTHENTICATED");
    }
    let auth = format!("Bearer {TOKEN}");
    let locked = send(
        &http,
        "GET",
        &url,
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(locked.status, 429);
    assert_eq!(locked.error_code(), "RATE_LIMITED");
    let retry_after: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The open endpoints stay open.
    let health = send(
        &http,
        "GET",
        &gateway.admin_url("/health"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(health.status, 200);
}
