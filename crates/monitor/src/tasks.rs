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
//! [`TaskRunner`] registered for its handler ([`crate::Outbox::add_runner`]; the outbox's own
//! side of tasks — writing, running, recording — is in `outbox/tasks.rs`); a task whose handler is
//! not registered here waits for a gateway that has it (its attempt fails, and is retried).
//!
//! Order: tasks with the same order key (one user's `last_login`, say) run in the order they
//! were written (they share a lane, as a notification group does); tasks without one each have
//! a lane of their own and run concurrently.

use std::future::Future;
use std::pin::Pin;

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

/// The runners registered on an outbox, by handler name (shared by its clones).
#[derive(Debug, Clone, Default)]
pub(crate) struct Runners(
    std::sync::Arc<
        std::sync::RwLock<std::collections::BTreeMap<String, std::sync::Arc<dyn TaskRunner>>>,
    >,
);

impl Runners {
    /// Runs the tasks of `handler` with `runner` from now on (replacing an earlier one).
    pub(crate) fn insert(&self, handler: &str, runner: std::sync::Arc<dyn TaskRunner>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handler.to_owned(), runner);
    }

    /// The runner of `handler`, if registered here.
    pub(crate) fn get(&self, handler: &str) -> Option<std::sync::Arc<dyn TaskRunner>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(handler)
            .cloned()
    }
}
