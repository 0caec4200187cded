//! Background tasks on the outbox: the durable task queue also carries work that is not a
//! notification — today the auth work a request need not wait for (audit rows, last logins,
//! lockouts; `sekisho-auth`'s `audit.rs`), tomorrow any other job.
//!
//! A task is a row of the same table (`notifications`) with channel [`TASK_CHANNEL`], its
//! handler's name as the receiver, its kind as the group key and its payload as the body, so it
//! has everything a notification has: written before anything is done, claimed with `FOR UPDATE
//! SKIP LOCKED` on PostgreSQL, retried with backoff and jitter, dead-lettered past the
//! outbox's `max_age`/`max_attempts`, kept in the delivery log (an hour once run, the retention
//! when dead), counted in the metrics and the queue depth (a stuck queue alerts). The worker hands a claimed task to the
//! [`TaskRunner`] registered for its handler ([`Outbox::add_runner`]); a task whose handler is
//! not registered here waits for a gateway that has it (its attempt fails, and is retried).
//!
//! Order: tasks with the same order key (one user's `last_login`, say) run in the order they
//! were written (they share a lane, as a notification group does); tasks without one each have
//! a lane of their own and run concurrently.

use std::future::Future;
use std::pin::Pin;

use sekisho_db::{now_millis, DbError};

use crate::outbox::Outbox;

/// The channel of a task row.
pub const TASK_CHANNEL: &str = "task";

/// How long a task that ran is kept in the delivery log at most (the outbox's retention, when
/// shorter): a busy gateway writes one per login.
pub const DONE_TASK_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

/// One task to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// What it is (shown as the row's group key).
    pub kind: String,
    /// Tasks with the same key run in the order they were written; `None`: no order.
    pub order_key: Option<String>,
    /// What the runner is given.
    pub payload: String,
}

/// What a batch of tasks came to: the result of each, in order.
pub type BatchRun<'a> = Pin<Box<dyn Future<Output = Vec<Result<(), TaskFailure>>> + Send + 'a>>;

/// Why a task's attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    /// What went wrong.
    pub error: String,
    /// It will never succeed (a payload the runner cannot read): dead at once.
    pub permanent: bool,
}

/// Runs the tasks of one handler.
pub trait TaskRunner: Send + Sync + std::fmt::Debug {
    /// Runs the task `id` with `payload`; it may run more than once (a worker killed after the
    /// work and before its record), so the work should be idempotent by `id`.
    fn run<'a>(
        &'a self,
        id: i64,
        payload: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), TaskFailure>> + Send + 'a>>;

    /// Runs several tasks (id, payload) claimed together, the result of each in order; by
    /// default one after the other, a runner may do them at once (one transaction).
    fn run_batch<'a>(&'a self, tasks: &'a [(i64, &'a str)]) -> BatchRun<'a> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(tasks.len());
            for (id, payload) in tasks {
                results.push(self.run(*id, payload).await);
            }
            results
        })
    }
}

impl Outbox {
    /// Writes `tasks` for `handler` as pending rows, due now, in one statement (all or none).
    pub async fn enqueue_tasks(&self, handler: &str, tasks: &[Task]) -> Result<(), DbError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        // receiver, channel, lane, group_key, payload per row; the rest shared.
        let rows: Vec<String> = (0..tasks.len())
            .map(|n| {
                let b = 3 + n * 3;
                format!(
                    "($1, $2, '', ${}, ${}, 'task', '', ${}, 'pending', 0, $3, $3)",
                    b + 1,
                    b + 2,
                    b + 3
                )
            })
            .collect();
        let text = format!(
            "INSERT INTO notifications (receiver, channel, url, lane, group_key, status, \
             fingerprints, payload, state, attempts, next_attempt_at, created_at) VALUES {}",
            rows.join(", ")
        );
        let mut query = sekisho_db::sqlx::query(&text)
            .bind(handler)
            .bind(TASK_CHANNEL)
            .bind(now);
        for task in tasks {
            let order = match &task.order_key {
                Some(key) => key.clone(),
                // A lane of its own: no earlier row can hold it back.
                None => format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            };
            query = query
                .bind(format!("{handler}\u{1f}{TASK_CHANNEL}\u{1f}{order}"))
                .bind(task.kind.clone())
                .bind(task.payload.clone());
        }
        query.execute(self.database().pool()).await?;
        self.wake();
        Ok(())
    }
}

/// The runners registered on an outbox, by handler name (shared by its clones).
#[derive(Debug, Clone, Default)]
pub(crate) struct Runners(
    std::sync::Arc<
        std::sync::RwLock<std::collections::BTreeMap<String, std::sync::Arc<dyn TaskRunner>>>,
    >,
);

impl Runners {
    /// The runner of `handler`, if registered here.
    pub(crate) fn get(&self, handler: &str) -> Option<std::sync::Arc<dyn TaskRunner>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(handler)
            .cloned()
    }
}

impl Outbox {
    /// Runs the tasks of `handler` with `runner` from now on (replacing an earlier one).
    pub fn add_runner(&self, handler: &str, runner: std::sync::Arc<dyn TaskRunner>) {
        self.runners()
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handler.to_owned(), runner);
        self.wake();
    }
}

/// Runs claimed tasks of one handler together: `Ok` for each done, or why not.
pub(crate) async fn run(
    outbox: &Outbox,
    handler: &str,
    tasks: &[(i64, &str)],
) -> Vec<Result<(), TaskFailure>> {
    match outbox.runners().get(handler) {
        Some(runner) => {
            let mut results = runner.run_batch(tasks).await;
            results.resize_with(tasks.len(), || {
                Err(TaskFailure {
                    error: "the runner gave no result".to_owned(),
                    permanent: false,
                })
            });
            results
        }
        None => tasks
            .iter()
            .map(|_| {
                Err(TaskFailure {
                    error: format!("no runner for `{handler}` tasks on this gateway"),
                    permanent: false,
                })
            })
            .collect(),
    }
}

impl Outbox {
    /// Waits until no task of `handler` is pending — each run, or dead — or `within` passes
    /// (a graceful stop's last look); whether none is left.
    pub async fn drain_tasks(&self, handler: &str, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let pending: Result<i64, _> = sekisho_db::sqlx::query_scalar(
                "SELECT COUNT(*) FROM notifications \
                 WHERE state = 'pending' AND channel = $1 AND receiver = $2",
            )
            .bind(TASK_CHANNEL)
            .bind(handler)
            .fetch_one(self.database().pool())
            .await;
            match pending {
                Ok(0) => return true,
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    // The worker's own wake-ups are not ours to take: look again shortly.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                _ => return false,
            }
        }
    }
}

impl Outbox {
    /// Records tasks `ids` as done, in one statement.
    pub(crate) async fn tasks_done(
        &self,
        ids: &[i64],
        latency: std::time::Duration,
    ) -> Result<(), DbError> {
        if ids.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = (0..ids.len()).map(|n| format!("${}", n + 3)).collect();
        let text = format!(
            "UPDATE notifications SET state = 'delivered', delivered_at = $1, finished_at = $1, \
             last_latency_ms = $2, claimed_by = NULL WHERE id IN ({})",
            list.join(", ")
        );
        let mut query = sekisho_db::sqlx::query(&text)
            .bind(now_millis())
            .bind(i64::try_from(latency.as_millis()).unwrap_or(i64::MAX));
        for id in ids {
            query = query.bind(*id);
        }
        query.execute(self.database().pool()).await?;
        self.wake();
        Ok(())
    }
}
