//! `sekisho demo` with the repository's example config (its addresses moved to free ports): the
//! demo services answer behind the gateway — a short link is made, followed, and its redirect
//! served from the gateway's cache the second time; a notification is accepted once per
//! idempotency key; the demo users it creates log in and reach the route that needs a login.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;

use bytes::Bytes;
use sekisho_testkit::{client, send, Sekisho, TempDir};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_the_shortener_and_the_notifications_behind_the_gateway() {
    let mut text = include_str!("../../../examples/sekisho.toml")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    for port in 9001..=9005 {
        text = text.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    let dir = TempDir::new("demo");
    let path = dir.write("sekisho.toml", &text);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_sekisho"));
    let demo = Sekisho::start_with(&binary, &["demo", "--config", path.to_str().unwrap()]);
    let http = client();

    let made = send(
        &http,
        "POST",
        &demo.url("/api/v1/shorten"),
        &[],
        Bytes::from_static(br#"{"url":"https://example.com/docs"}"#),
    )
    .await;
    assert_eq!(made.status, 201, "{}", String::from_utf8_lossy(&made.body));
    let key = made.json()["key"].as_str().unwrap().to_owned();
    let first = send(
        &http,
        "GET",
        &demo.url(&format!("/s/{key}")),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(first.status, 301);
    assert_eq!(first.header("location"), Some("https://example.com/docs"));
    let second = send(
        &http,
        "GET",
        &demo.url(&format!("/s/{key}")),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(second.status, 301);
    assert!(
        second.header("cache-status").unwrap_or("").contains("hit"),
        "the second read of a link comes from the gateway's cache: {:?}",
        second.header("cache-status")
    );
    let stats = send(
        &http,
        "GET",
        &demo.url(&format!("/api/v1/links/{key}")),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        stats.json()["clicks"],
        1,
        "only the miss reached the service"
    );

    let body = Bytes::from_static(br#"{"user":"ada","channel":"email","message":"hi"}"#);
    let url = demo.url("/api/v1/notifications");
    let queued = send(
        &http,
        "POST",
        &url,
        &[("idempotency-key", "demo-1")],
        body.clone(),
    )
    .await;
    assert_eq!(
        queued.status,
        202,
        "{}",
        String::from_utf8_lossy(&queued.body)
    );
    let again = send(&http, "POST", &url, &[("idempotency-key", "demo-1")], body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], queued.json()["id"]);

    // The demo's users, as it prints them.
    let account = demo.url("/api/account");
    let anonymous = send(&http, "GET", &account, &[], Bytes::new()).await;
    assert_eq!(anonymous.status, 401);
    let login = send(
        &http,
        "POST",
        &demo.url("/auth/login"),
        &[],
        Bytes::from_static(br#"{"username":"ada","password":"demo-password-ada"}"#),
    )
    .await;
    assert_eq!(
        login.status,
        200,
        "{}",
        String::from_utf8_lossy(&login.body)
    );
    let token = login.json()["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let mine = send(
        &http,
        "GET",
        &account,
        &[("authorization", bearer.as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!(mine.status, 200, "{}", String::from_utf8_lossy(&mine.body));
    let wrong = send(
        &http,
        "POST",
        &demo.url("/auth/login"),
        &[],
        Bytes::from_static(br#"{"username":"bob","password":"not bob's"}"#),
    )
    .await;
    assert_eq!(wrong.status, 401);
}
