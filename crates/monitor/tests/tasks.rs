#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Background tasks on the outbox — the durable task queue that also carries the auth work —
//! on real SQLite and real PostgreSQL (issue 16, item 5): a task is run by its handler's runner,
//! a failing one is retried until it succeeds, one the runner can never run is dead at once,
//! tasks that share an order key run one after the other in the order they were written (those
//! without one are run in batches), a
//! task without a runner on this gateway waits for one, and a batch is written all or none.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;
use sekisho_monitor::{DeliveryState, Outbox, OutboxSettings, Task, TaskFailure, TaskRunner};
use support::eventually;

/// Records what it ran; fails the first `failures` attempts, and refuses payload `"bad"` for
/// good. Each run waits a little, so that tasks that could overlap do.
#[derive(Debug, Default)]
struct Recorder {
    ran: Mutex<Vec<(i64, String)>>,
    running: AtomicU32,
    overlapped: AtomicU32,
    failures: AtomicU32,
    /// The size of each batch it was given.
    batches: Mutex<Vec<usize>>,
}

impl TaskRunner for Recorder {
    fn run<'a>(
        &'a self,
        id: i64,
        payload: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), TaskFailure>> + Send + 'a>> {
        Box::pin(async move {
            if payload == "bad" {
                return Err(TaskFailure {
                    error: "not a task of mine".to_owned(),
                    permanent: true,
                });
            }
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(TaskFailure {
                    error: "database refused".to_owned(),
                    permanent: false,
                });
            }
            if self.running.fetch_add(1, Ordering::SeqCst) > 0 {
                self.overlapped.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.ran.lock().unwrap().push((id, payload.to_owned()));
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn run_batch<'a>(&'a self, tasks: &'a [(i64, &'a str)]) -> sekisho_monitor::BatchRun<'a> {
        self.batches.lock().unwrap().push(tasks.len());
        Box::pin(async move {
            let mut results = Vec::new();
            for (id, payload) in tasks {
                results.push(self.run(*id, payload).await);
            }
            results
        })
    }
}

impl Recorder {
    fn biggest_batch(&self) -> usize {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }

    fn ran(&self) -> Vec<(i64, String)> {
        self.ran.lock().unwrap().clone()
    }
}

fn settings() -> OutboxSettings {
    OutboxSettings {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..OutboxSettings::default()
    }
}

fn task(payload: &str, order_key: Option<&str>) -> Task {
    Task {
        kind: "test".to_owned(),
        order_key: order_key.map(str::to_owned),
        payload: payload.to_owned(),
    }
}

async fn states(outbox: &Outbox) -> Vec<(String, String, i64, Option<String>)> {
    let mut rows: Vec<_> = outbox
        .list(None, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.group_key, r.state, r.attempts, r.last_error))
        .collect();
    rows.reverse();
    rows
}

async fn tasks_run_retry_and_die_as_notifications_do(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    let runner = Arc::new(Recorder {
        failures: AtomicU32::new(2),
        ..Recorder::default()
    });
    outbox.add_runner("jobs", runner.clone());
    outbox
        .enqueue_tasks("jobs", &[task("one", None), task("bad", None)])
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    eventually(Duration::from_secs(10), "both finished", || async {
        outbox.depth().await.unwrap().pending == 0
    })
    .await;
    let ran = runner.ran();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(ran[0].1, "one");
    let done = outbox
        .list(Some(DeliveryState::Delivered), None, 10)
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, ran[0].0, "the runner is given the task's id");
    assert_eq!(done[0].channel, "task");
    assert_eq!(done[0].receiver, "jobs");
    assert_eq!(done[0].url, "", "a task has no URL to show");
    assert_eq!(done[0].last_status, None, "and no status");
    assert!(
        done[0].attempts >= 2,
        "retried after the runner's failures: {:?}",
        states(&outbox).await
    );
    let dead = outbox
        .list(Some(DeliveryState::Dead), None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{:?}", states(&outbox).await);
    assert_eq!(dead[0].attempts, 1, "a permanent failure is not retried");
    assert_eq!(dead[0].last_error.as_deref(), Some("not a task of mine"));
    worker.abort();
    test.remove().await.unwrap();
}

async fn tasks_sharing_an_order_key_run_one_after_the_other(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    let ordered = Arc::new(Recorder::default());
    let free = Arc::new(Recorder::default());
    outbox.add_runner("ordered", ordered.clone());
    outbox.add_runner("free", free.clone());
    let keyed: Vec<Task> = (0..20)
        .map(|n| task(&n.to_string(), Some("user:1")))
        .collect();
    outbox.enqueue_tasks("ordered", &keyed).await.unwrap();
    let unkeyed: Vec<Task> = (0..20).map(|n| task(&n.to_string(), None)).collect();
    outbox.enqueue_tasks("free", &unkeyed).await.unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    eventually(Duration::from_secs(20), "all ran", || async {
        ordered.ran().len() == 20 && free.ran().len() == 20
    })
    .await;
    let order: Vec<String> = ordered.ran().into_iter().map(|(_, p)| p).collect();
    let written: Vec<String> = (0..20).map(|n| n.to_string()).collect();
    assert_eq!(order, written, "in the order they were written");
    assert_eq!(
        ordered.overlapped.load(Ordering::SeqCst),
        0,
        "never two of one key at once"
    );
    assert_eq!(
        ordered.biggest_batch(),
        1,
        "one task of a key at a time, never two in a batch"
    );
    assert!(
        free.biggest_batch() > 1,
        "tasks without a key are claimed and run together"
    );
    worker.abort();
    test.remove().await.unwrap();
}

async fn a_task_without_a_runner_waits_for_one(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    outbox
        .enqueue_tasks("later", &[task("kept", None)])
        .await
        .unwrap();
    let worker = tokio::spawn(sekisho_monitor::worker::run(outbox.clone()));
    eventually(
        Duration::from_secs(10),
        "tried without a runner",
        || async { states(&outbox).await.first().is_some_and(|r| r.2 >= 2) },
    )
    .await;
    let row = states(&outbox).await.remove(0);
    assert_eq!(row.1, "pending", "{row:?}");
    assert!(
        row.3.as_deref().is_some_and(|e| e.contains("no runner")),
        "{row:?}"
    );
    let runner = Arc::new(Recorder::default());
    outbox.add_runner("later", runner.clone());
    eventually(
        Duration::from_secs(10),
        "run once a runner is here",
        || async { runner.ran().len() == 1 },
    )
    .await;
    worker.abort();
    test.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tasks_run_retry_and_die_as_notifications_do() {
    tasks_run_retry_and_die_as_notifications_do(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tasks_run_retry_and_die_as_notifications_do() {
    tasks_run_retry_and_die_as_notifications_do(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tasks_sharing_an_order_key_run_one_after_the_other() {
    tasks_sharing_an_order_key_run_one_after_the_other(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tasks_sharing_an_order_key_run_one_after_the_other() {
    tasks_sharing_an_order_key_run_one_after_the_other(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_task_without_a_runner_waits_for_one() {
    a_task_without_a_runner_waits_for_one(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_task_without_a_runner_waits_for_one() {
    a_task_without_a_runner_waits_for_one(Dialect::Postgres).await;
}

/// A batch with a task the database refuses is written not at all: the queue never holds half
/// of what a caller was told failed (it retries the whole batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batch_is_written_all_or_none() {
    let test = TestDatabase::new(Dialect::Postgres).await.unwrap();
    let outbox = Outbox::open(test.open().await.unwrap(), settings())
        .await
        .unwrap();
    // PostgreSQL refuses a NUL in text.
    let refused = outbox
        .enqueue_tasks("jobs", &[task("fine", None), task("nul\0here", None)])
        .await;
    assert!(refused.is_err());
    assert_eq!(outbox.depth().await.unwrap().pending, 0);
    test.remove().await.unwrap();
}

/// A task that ran leaves the delivery log after an hour; a notification of the same age, and a
/// dead task, stay for the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tasks_that_ran_leave_the_log_after_an_hour() {
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let database = test.open().await.unwrap();
    let outbox = Outbox::open(database.clone(), settings()).await.unwrap();
    outbox
        .enqueue_tasks("jobs", &[task("ran", None), task("died", None)])
        .await
        .unwrap();
    outbox
        .enqueue(&sekisho_monitor::Delivery {
            receiver: "ops".to_owned(),
            channel: sekisho_monitor::Channel::Webhook,
            url: "http://127.0.0.1:9/hook".to_owned(),
            group_key: "g".to_owned(),
            status: "firing".to_owned(),
            fingerprints: vec![],
            body: serde_json::json!({}),
        })
        .await
        .unwrap();
    let two_hours_ago = sekisho_db::now_millis() - 2 * 3600 * 1000;
    for (payload, state) in [("ran", "delivered"), ("died", "dead")] {
        sekisho_db::sqlx::query(
            "UPDATE notifications SET state = $1, finished_at = $2 WHERE payload = $3",
        )
        .bind(state)
        .bind(two_hours_ago)
        .bind(payload)
        .execute(database.pool())
        .await
        .unwrap();
    }
    sekisho_db::sqlx::query(
        "UPDATE notifications SET state = 'delivered', finished_at = $1 WHERE channel = 'webhook'",
    )
    .bind(two_hours_ago)
    .execute(database.pool())
    .await
    .unwrap();
    assert_eq!(outbox.purge().await.unwrap(), 1);
    let left: Vec<String> = outbox
        .list(None, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{}:{}", r.channel, r.state))
        .collect();
    assert_eq!(left, vec!["webhook:delivered", "task:dead"]);
    test.remove().await.unwrap();
}
