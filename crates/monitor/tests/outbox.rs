#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The notification outbox on real SQLite and real PostgreSQL, delivering to a real HTTP
//! receiver over a real socket (issue 16): a receiver answering 500 or refusing connections
//! gets the notification once it recovers, a group's `firing` always arrives before its
//! `resolved`, an outbox reopened on the same database delivers what was pending, a row tried
//! too often is dead, and on PostgreSQL two workers share the queue without delivering a row
//! twice.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;
use sekisho_monitor::{Channel, Delivery, DeliveryState, Outbox, OutboxSettings};
use serde_json::{json, Value};
use support::eventually;
use tokio::net::TcpListener;

/// What the receiver got: each request's notification id, body and the status it answered.
#[derive(Debug, Clone)]
struct Received {
    id: i64,
    body: Value,
    status: u16,
}

/// A webhook receiver on `listener` that answers 500 to its first `failures` requests, then 200.
#[derive(Clone)]
struct Receiver {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(failures: u32) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), failures)
    }

    fn on(listener: TcpListener, failures: u32) -> Self {
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let left = Arc::new(AtomicU32::new(failures));
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                let left = Arc::clone(&left);
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let log = Arc::clone(&log);
                            let left = Arc::clone(&left);
                            async move {
                                let id = request
                                    .headers()
                                    .get("x-sekisho-notification-id")
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(-1);
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let fail = left
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                        n.checked_sub(1)
                                    })
                                    .is_ok();
                                let status = if fail { 500 } else { 200 };
                                log.lock().unwrap().push(Received {
                                    id,
                                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                                    status,
                                });
                                let mut response = http::Response::new(Full::new(Bytes::new()));
                                *response.status_mut() =
                                    http::StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { address, received }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }
}

fn settings() -> OutboxSettings {
    OutboxSettings {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..OutboxSettings::default()
    }
}

fn delivery(url: &str, group: &str, status: &str) -> Delivery {
    Delivery {
        receiver: "ops".to_owned(),
        channel: Channel::Webhook,
        url: url.to_owned(),
        group_key: group.to_owned(),
        status: status.to_owned(),
        fingerprints: vec![format!("fp-{group}")],
        body: json!({ "groupKey": group, "status": status }),
    }
}

async fn state_of(outbox: &Outbox, id: i64) -> (String, i64, Option<String>) {
    let row = outbox
        .list(None, Some(id + 1), 1)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap();
    (row.state, row.attempts, row.last_error)
}

async fn a_receiver_answering_500_gets_it_once_it_recovers(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    let receiver = Receiver::start(3).await;
    let id = outbox
        .enqueue(&delivery(&receiver.url(), "g", "firing"))
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    eventually(Duration::from_secs(10), "delivered", || async {
        state_of(&outbox, id).await.0 == "delivered"
    })
    .await;
    let (_, attempts, _) = state_of(&outbox, id).await;
    assert_eq!(attempts, 4, "three 500s, then a 200");
    let got = receiver.received();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(receiver.delivered().len(), 1);
    assert!(got.iter().all(|r| r.id == id && r.body["groupKey"] == "g"));
    let log = outbox
        .list(Some(DeliveryState::Delivered), None, 10)
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].last_status, Some(200));
    assert!(log[0].delivered_at.is_some());
    assert_eq!(log[0].fingerprints, vec!["fp-g".to_owned()]);
    worker.abort();
    test.remove().await.unwrap();
}

async fn a_refused_connection_is_retried_until_the_receiver_listens(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    // A port nobody listens on (yet).
    let address = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{address}/hook");
    let id = outbox
        .enqueue(&delivery(&url, "g", "firing"))
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    eventually(Duration::from_secs(10), "refused twice", || async {
        let (state, attempts, error) = state_of(&outbox, id).await;
        state == "pending" && attempts >= 2 && error.is_some_and(|e| e.contains("refused"))
    })
    .await;
    let receiver = Receiver::on(TcpListener::bind(address).await.unwrap(), 0);
    eventually(Duration::from_secs(10), "delivered", || async {
        state_of(&outbox, id).await.0 == "delivered"
    })
    .await;
    assert_eq!(receiver.delivered().len(), 1);
    assert_eq!(outbox.depth().await.unwrap().pending, 0);
    worker.abort();
    test.remove().await.unwrap();
}

async fn firing_always_arrives_before_its_resolved(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    // The first attempts fail, so the resolved rows are due while their firing ones wait.
    let receiver = Receiver::start(6).await;
    for group in ["a", "b", "c"] {
        outbox
            .enqueue(&delivery(&receiver.url(), group, "firing"))
            .await
            .unwrap();
    }
    for group in ["a", "b", "c"] {
        outbox
            .enqueue(&delivery(&receiver.url(), group, "resolved"))
            .await
            .unwrap();
    }
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    eventually(Duration::from_secs(10), "all six delivered", || async {
        receiver.delivered().len() == 6
    })
    .await;
    let got = receiver.received();
    for group in ["a", "b", "c"] {
        let of_group: Vec<&str> = got
            .iter()
            .filter(|r| r.body["groupKey"] == group)
            .map(|r| r.body["status"].as_str().unwrap())
            .collect();
        let first_resolved = of_group.iter().position(|s| *s == "resolved").unwrap();
        assert!(
            of_group[..first_resolved].iter().all(|s| *s == "firing")
                && !of_group[first_resolved..].contains(&"firing"),
            "group {group}: {of_group:?}"
        );
    }
    worker.abort();
    test.remove().await.unwrap();
}

async fn pending_rows_are_delivered_by_the_next_outbox_on_the_database(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let address = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{address}/hook");
    // A backoff of a second: the first worker is stopped between its attempts, with the row
    // pending, not in the middle of one (a claimed row waits for its 30 s lease).
    let slow_retries = OutboxSettings {
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        ..OutboxSettings::default()
    };
    let first = Outbox::open(test.open().await.unwrap(), slow_retries)
        .await
        .unwrap();
    let id = first.enqueue(&delivery(&url, "g", "firing")).await.unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(first.clone()));
    // Tried and failed (a claim counts the attempt before it is made: wait for its error).
    eventually(Duration::from_secs(10), "tried", || async {
        state_of(&first, id).await.2.is_some()
    })
    .await;
    // The first gateway goes away with the row pending …
    worker.abort();
    let _ = worker.await;
    first.database().close().await;
    // … the receiver comes up, and another outbox on the same database delivers it.
    let receiver = Receiver::on(TcpListener::bind(address).await.unwrap(), 0);
    let second = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(second.clone()));
    eventually(Duration::from_secs(10), "delivered", || async {
        state_of(&second, id).await.0 == "delivered"
    })
    .await;
    assert_eq!(receiver.delivered().len(), 1);
    worker.abort();
    test.remove().await.unwrap();
}

async fn a_row_tried_too_often_is_dead(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let outbox = Outbox::open(
        test.open().await.unwrap(),
        OutboxSettings {
            max_attempts: Some(2),
            ..settings()
        },
    )
    .await
    .unwrap();
    let receiver = Receiver::start(u32::MAX).await;
    let id = outbox
        .enqueue(&delivery(&receiver.url(), "g", "firing"))
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    eventually(Duration::from_secs(10), "dead", || async {
        state_of(&outbox, id).await.0 == "dead"
    })
    .await;
    let (_, attempts, error) = state_of(&outbox, id).await;
    assert_eq!(attempts, 2);
    assert!(error.unwrap().contains("500"));
    let dead = outbox
        .list(Some(DeliveryState::Dead), None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(outbox
        .list(Some(DeliveryState::Pending), None, 10)
        .await
        .unwrap()
        .is_empty());
    worker.abort();
    test.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_receiver_answering_500_gets_it_once_it_recovers() {
    a_receiver_answering_500_gets_it_once_it_recovers(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_receiver_answering_500_gets_it_once_it_recovers() {
    a_receiver_answering_500_gets_it_once_it_recovers(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_refused_connection_is_retried_until_the_receiver_listens() {
    a_refused_connection_is_retried_until_the_receiver_listens(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_refused_connection_is_retried_until_the_receiver_listens() {
    a_refused_connection_is_retried_until_the_receiver_listens(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_firing_always_arrives_before_its_resolved() {
    firing_always_arrives_before_its_resolved(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_firing_always_arrives_before_its_resolved() {
    firing_always_arrives_before_its_resolved(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pending_rows_are_delivered_by_the_next_outbox_on_the_database() {
    pending_rows_are_delivered_by_the_next_outbox_on_the_database(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pending_rows_are_delivered_by_the_next_outbox_on_the_database() {
    pending_rows_are_delivered_by_the_next_outbox_on_the_database(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_row_tried_too_often_is_dead() {
    a_row_tried_too_often_is_dead(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_row_tried_too_often_is_dead() {
    a_row_tried_too_often_is_dead(Dialect::Postgres).await;
}

/// Two gateways on one PostgreSQL database: `FOR UPDATE SKIP LOCKED` gives each row to one of
/// them; every row arrives exactly once, and each group's rows in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_workers_share_the_queue_without_delivering_a_row_twice() {
    let test = TestDatabase::new(Dialect::Postgres).await.unwrap();
    let receiver = Receiver::start(0).await;
    let one = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    let two = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..200 {
        let group = format!("g{}", n % 20);
        let status = if n < 100 { "firing" } else { "resolved" };
        let outbox = if n % 2 == 0 { &one } else { &two };
        ids.push(
            outbox
                .enqueue(&delivery(&receiver.url(), &group, status))
                .await
                .unwrap(),
        );
    }
    let workers = [
        tokio::spawn(sekisho_monitor::worker::run(one.clone())),
        tokio::spawn(sekisho_monitor::worker::run(two.clone())),
    ];
    eventually(Duration::from_secs(20), "200 delivered", || async {
        receiver.delivered().len() >= 200 && one.depth().await.unwrap().pending == 0
    })
    .await;
    let got = receiver.delivered();
    let mut seen: Vec<i64> = got.iter().map(|r| r.id).collect();
    seen.sort_unstable();
    assert_eq!(seen, ids, "each row exactly once");
    for group in 0..20 {
        let key = format!("g{group}");
        let order: Vec<i64> = got
            .iter()
            .filter(|r| r.body["groupKey"] == key.as_str())
            .map(|r| r.id)
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{key}: {order:?}");
    }
    for worker in workers {
        worker.abort();
    }
    test.remove().await.unwrap();
}

/// A gateway killed mid-attempt on a shared PostgreSQL: while its claiming connection lives,
/// its claim holds (the lease); once that connection is gone, another gateway takes the row at
/// once instead of 30 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_row_claimed_by_a_dead_gateway_is_taken_again_at_once() {
    let test = TestDatabase::new(Dialect::Postgres).await.unwrap();
    let one = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    let two = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    let id = one
        .enqueue(&delivery("http://127.0.0.1:9/hook", "g", "firing"))
        .await
        .unwrap();
    let claimed = one.claim(10).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id]);
    assert!(
        two.claim(10).await.unwrap().is_empty(),
        "a live gateway's claim is its own"
    );
    let db = test.open().await.unwrap();
    let claimer: i64 =
        sekisho_db::sqlx::query_scalar("SELECT claimed_by FROM notifications WHERE id = $1")
            .bind(id)
            .fetch_one(db.pool())
            .await
            .unwrap();
    // The first gateway dies: its connections go (as a SIGKILL makes them).
    let _: bool = sekisho_db::sqlx::query_scalar("SELECT pg_terminate_backend($1::int)")
        .bind(claimer)
        .fetch_one(db.pool())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let again = loop {
        let again = two.claim(10).await.unwrap();
        if !again.is_empty() || tokio::time::Instant::now() >= deadline {
            break again;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(again.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(again[0].attempts, 2, "its second attempt");
    db.close().await;
    drop(claimed);
    test.remove().await.unwrap();
}
