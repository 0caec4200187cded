//! The demo services over real sockets: the URL shortener's keys, redirects and clicks; the
//! notification service's idempotency, opt-outs, per-user limit and at-least-once delivery.
// Test code: a failed step panics the test, as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sekisho_load::{Service, ServiceServer, NOTIFICATIONS_PER_MINUTE};
use serde_json::Value;

type Http = Client<HttpConnector, Full<Bytes>>;

async fn start(service: Service, fail_first: f64) -> SocketAddr {
    let server = ServiceServer::bind(service, "127.0.0.1:0".parse().unwrap(), fail_first)
        .await
        .unwrap();
    let address = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    address
}

async fn call(
    http: &Http,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, Value) {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = http
        .request(
            request
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status.as_u16(), parts.headers, json)
}

#[tokio::test]
async fn the_shortener_makes_base62_keys_redirects_and_counts_clicks() {
    let address = start(Service::Shortener, 0.0).await;
    let http = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://{address}");
    let (status, _, made) = call(
        &http,
        "POST",
        format!("{base}/api/v1/shorten"),
        &[],
        r#"{"url":"https://example.com/a/long/path?q=1"}"#,
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 7);
    assert!(key.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
    assert_eq!(made["path"], format!("/{key}"));

    for _ in 0..2 {
        let (status, headers, _) = call(&http, "GET", format!("{base}/{key}"), &[], "").await;
        assert_eq!(status, 301);
        assert_eq!(
            headers["location"], "https://example.com/a/long/path?q=1",
            "the redirect goes where the link says"
        );
        assert!(headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age"));
    }
    let (status, _, stats) =
        call(&http, "GET", format!("{base}/api/v1/links/{key}"), &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(stats["clicks"], 2, "{stats}");

    let (status, _, _) = call(&http, "GET", format!("{base}/zzzzzzz"), &[], "").await;
    assert_eq!(status, 404, "an unknown key");
    for bad in [
        r#"{"url":"ftp://example.com/x"}"#,
        r#"{"url":"/relative"}"#,
        r#"{"nope":1}"#,
    ] {
        let (status, _, answer) =
            call(&http, "POST", format!("{base}/api/v1/shorten"), &[], bad).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let long = format!(r#"{{"url":"https://example.com/{}"}}"#, "a".repeat(2100));
    let (status, _, _) = call(&http, "POST", format!("{base}/api/v1/shorten"), &[], &long).await;
    assert_eq!(status, 400, "a URL over 2048 bytes");
}

/// Polls a notification until it is delivered (bounded: 10 s).
async fn delivered(http: &Http, base: &str, id: u64) -> Value {
    for _ in 0..200 {
        let (_, _, note) = call(
            http,
            "GET",
            format!("{base}/api/v1/notifications/{id}"),
            &[],
            "",
        )
        .await;
        if note["status"] == "delivered" {
            return note;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("notification {id} not delivered within 10 s");
}

#[tokio::test]
async fn notifications_are_idempotent_and_delivered_at_least_once() {
    // Every first delivery attempt fails: each notification is delivered on its second.
    let address = start(Service::Notifications, 1.0).await;
    let http = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://{address}");
    let body = r#"{"user":"ada","channel":"email","message":"hello"}"#;
    let url = format!("{base}/api/v1/notifications");
    let (status, _, refused) = call(&http, "POST", url.clone(), &[], body).await;
    assert_eq!(status, 400, "no Idempotency-Key: {refused}");
    let (status, _, first) = call(
        &http,
        "POST",
        url.clone(),
        &[("idempotency-key", "k1")],
        body,
    )
    .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["status"], "queued");
    let id = first["id"].as_u64().unwrap();
    let (status, _, again) = call(
        &http,
        "POST",
        url.clone(),
        &[("idempotency-key", "k1")],
        body,
    )
    .await;
    assert_eq!(status, 200, "the same key again: {again}");
    assert_eq!(
        again["id"], id,
        "the first answer's id, nothing queued twice"
    );
    let note = delivered(&http, &base, id).await;
    assert_eq!(
        note["attempts"], 2,
        "failed once, delivered on the retry: {note}"
    );
    let (status, _, bad) = call(
        &http,
        "POST",
        url,
        &[("idempotency-key", "k2")],
        r#"{"user":"ada","channel":"pigeon","message":"hello"}"#,
    )
    .await;
    assert_eq!(status, 400, "{bad}");
}

#[tokio::test]
async fn opt_outs_suppress_and_each_user_is_limited_per_minute() {
    let address = start(Service::Notifications, 0.0).await;
    let http = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://{address}");
    let url = format!("{base}/api/v1/notifications");
    let (status, _, _) = call(
        &http,
        "PUT",
        format!("{base}/api/v1/users/bob/opt-outs"),
        &[],
        r#"{"channels":["sms"]}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, suppressed) = call(
        &http,
        "POST",
        url.clone(),
        &[("idempotency-key", "s1")],
        r#"{"user":"bob","channel":"sms","message":"hi"}"#,
    )
    .await;
    assert_eq!(
        (status, suppressed["status"].as_str()),
        (200, Some("suppressed"))
    );
    let (status, _, queued) = call(
        &http,
        "POST",
        url.clone(),
        &[("idempotency-key", "e1")],
        r#"{"user":"bob","channel":"email","message":"hi"}"#,
    )
    .await;
    assert_eq!((status, queued["status"].as_str()), (202, Some("queued")));

    // The limit: a fixed one-minute window. Should the minute turn during the burst, try once
    // more in the next one.
    for round in 0..2 {
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60;
        let user = format!("carol{round}");
        let mut statuses = Vec::new();
        for n in 0..=NOTIFICATIONS_PER_MINUTE {
            let (status, headers, _) = call(
                &http,
                "POST",
                url.clone(),
                &[("idempotency-key", &format!("{user}-{n}"))],
                &format!(r#"{{"user":"{user}","channel":"push","message":"m{n}"}}"#),
            )
            .await;
            if status == 429 {
                assert!(headers.contains_key("retry-after"));
            }
            statuses.push(status);
        }
        let same_minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
            == minute;
        if !same_minute && round == 0 {
            continue;
        }
        let limit = NOTIFICATIONS_PER_MINUTE as usize;
        assert!(statuses[..limit].iter().all(|s| *s == 202), "{statuses:?}");
        assert_eq!(statuses[limit], 429, "{statuses:?}");
        break;
    }
}

/// A body over the services' 16 KiB is refused with 413 after it was read (up to 4 MiB): the
/// connection is not closed on unread bytes, whose reset could destroy the answer in flight.
#[tokio::test]
async fn a_body_over_the_limit_is_read_then_refused_with_413() {
    let address = start(Service::Shortener, 0.0).await;
    let http = Client::builder(TokioExecutor::new()).build_http();
    let big = format!(
        "{{\"url\":\"https://example.com/{}\"}}",
        "a".repeat(300_000)
    );
    for _ in 0..5 {
        let (status, _, body) = call(
            &http,
            "POST",
            format!("http://{address}/api/v1/shorten"),
            &[],
            &big,
        )
        .await;
        assert_eq!(status, 413, "{body}");
    }
}
