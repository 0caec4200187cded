//! `sekisho demo` with the repository's example config (its addresses moved to free ports): the
//! demo services answer behind the gateway — a short link is made, followed, and its redirect
//! served from the gateway's cache the second time; a notification is accepted once per
//! idempotency key; the demo users it creates log in and reach the route that needs a login —
//! and the README's guided script ("Break something") works as written: payments slowed down,
//! its circuit opens, the alert reaches the demo's receiver, and the other routes still answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{demo_config, start_demo};
use sekisho_testkit::{client, send, try_send, Sekisho, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_the_shortener_and_the_notifications_behind_the_gateway() {
    let (text, _) = demo_config();
    let dir = TempDir::new("demo");
    let demo = start_demo(&dir, &text);
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

/// Polls `check` every 200 ms until it gives a value, for at most `limit`; panics with `what`
/// (and the demo's log) when it never does.
async fn poll_until<T, F, Fut>(demo: &Sekisho, what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The README's "Break something", step by step, against a real `sekisho demo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_the_guided_script_slow_payments_open_circuit_alert_other_routes_answer() {
    let (text, ports) = demo_config();
    let dir = TempDir::new("demo-script");
    let demo = start_demo(&dir, &text);
    let http = client();
    let payments_chaos = format!("http://127.0.0.1:{}/_chaos", ports[&9003]);
    let receiver = format!("http://127.0.0.1:{}/alerts", ports[&9006]);
    let bearer = [("authorization", "Bearer change-me")];

    // 1. Slow the payments service down: its chaos upstream answers after 5 s.
    let slowed = send(
        &http,
        "POST",
        &payments_chaos,
        &[],
        Bytes::from_static(br#"{"latency_ms":5000}"#),
    )
    .await;
    assert_eq!(
        slowed.status,
        200,
        "{}",
        String::from_utf8_lossy(&slowed.body)
    );

    // 2. The dashboard is there.
    let page = send(&http, "GET", &demo.admin_url("/"), &[], Bytes::new()).await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<html"));

    // 3. Twenty payments at once: each waits out its deadline (or is refused once the
    // circuit opens); every one is answered.
    let calls = (0..20).map(|_| {
        let http = http.clone();
        let url = demo.url("/api/payments/1");
        async move { try_send(&http, "GET", &url, &[], Bytes::new()).await }
    });
    for answer in futures_util::future::join_all(calls).await {
        let answer = answer.expect("a payment call answered");
        assert!(answer.status >= 500, "payments is slow: {}", answer.status);
    }

    // 4. The circuit of payments is open (the admin API, as the dashboard shows it).
    let circuits = demo.admin_url("/api/v1/circuits");
    poll_until(
        &demo,
        "the payments circuit opens",
        Duration::from_secs(30),
        || async {
            let answer = send(&http, "GET", &circuits, &bearer, Bytes::new()).await;
            answer.json()["circuits"]
                .as_array()?
                .iter()
                .any(|c| c["name"] == "payments" && c["state"] == "open")
                .then_some(())
        },
    )
    .await;
    // …so a payment is refused at once with the route's fallback.
    let refused = send(
        &http,
        "GET",
        &demo.url("/api/payments/1"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );

    // 5. The alert fires and reaches the demo's receiver.
    let alert = poll_until(
        &demo,
        "the CircuitOpen alert reaches the receiver",
        Duration::from_secs(60),
        || async {
            let answer = send(&http, "GET", &receiver, &[], Bytes::new()).await;
            answer.json()["alerts"]
                .as_array()?
                .iter()
                .find(|a| {
                    a["alertname"] == "CircuitOpen"
                        && a["status"] == "firing"
                        && a["target"] == "payments"
                })
                .cloned()
        },
    )
    .await;
    assert_eq!(alert["severity"], "warning");
    assert!(
        demo.log().contains("alert received"),
        "the demo logs each alert it receives"
    );
    let delivered = send(
        &http,
        "GET",
        &demo.admin_url("/api/v1/notifications?state=delivered"),
        &bearer,
        Bytes::new(),
    )
    .await;
    assert_eq!(delivered.status, 200);
    assert!(
        !delivered.json()["notifications"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the delivery log shows it: {}",
        String::from_utf8_lossy(&delivered.body)
    );

    // 6. The other routes still answer (their upstream is not payments').
    let orders = tokio::time::timeout(
        Duration::from_secs(10),
        send(&http, "GET", &demo.url("/api/orders/7"), &[], Bytes::new()),
    )
    .await
    .expect("orders answered while payments is slow");
    assert_eq!(
        orders.status,
        200,
        "{}",
        String::from_utf8_lossy(&orders.body)
    );
}
