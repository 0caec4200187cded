//! The auth work a request need not wait for, on the durable task queue: `sekisho-auth` queues
//! its jobs (audit rows, last logins, lockouts) and stores each batch here as task rows of the
//! notification outbox (`sekisho-monitor`'s `tasks.rs`); the outbox's worker hands each back to
//! `Auth::apply_job`. The two crates do not know each other: this is where they meet.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sekisho_auth::audit::{Job, JobStore};
use sekisho_auth::{Auth, AuthError};
use sekisho_monitor::{BatchRun, Outbox, Task, TaskFailure, TaskRunner};

/// The handler name of the auth tasks (the rows' receiver).
pub const AUTH_TASKS: &str = "auth";

/// Wires `auth`'s background work to `outbox`: its jobs are stored there, and run from there.
pub fn connect(auth: &Arc<Auth>, outbox: &Outbox) {
    outbox.add_runner(AUTH_TASKS, Arc::new(AuthRunner(Arc::downgrade(auth))));
    if !auth.attach_job_store(Arc::new(OutboxStore(outbox.clone()))) {
        tracing::warn!("the auth background work already had a store; left as it was");
    }
}

/// Stores auth jobs as tasks.
#[derive(Debug)]
struct OutboxStore(Outbox);

impl JobStore for OutboxStore {
    fn store<'a>(
        &'a self,
        jobs: &'a [Job],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let tasks = jobs
                .iter()
                .map(|job| {
                    Ok(Task {
                        kind: job.kind().to_owned(),
                        order_key: job.order_key(),
                        payload: job.payload()?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            self.0
                .enqueue_tasks(AUTH_TASKS, &tasks)
                .await
                .map_err(|error| error.to_string())
        })
    }
}

/// Runs auth tasks (weak: the gateway's `Auth` owns the outbox's worker, not the other way).
#[derive(Debug)]
struct AuthRunner(std::sync::Weak<Auth>);

impl TaskRunner for AuthRunner {
    fn run<'a>(
        &'a self,
        id: i64,
        payload: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), TaskFailure>> + Send + 'a>> {
        Box::pin(async move {
            let Some(auth) = self.0.upgrade() else {
                return Err(stopping());
            };
            auth.apply_job(id, payload).await.map_err(failure)
        })
    }

    fn run_batch<'a>(&'a self, tasks: &'a [(i64, &'a str)]) -> BatchRun<'a> {
        Box::pin(async move {
            let Some(auth) = self.0.upgrade() else {
                return tasks.iter().map(|_| Err(stopping())).collect();
            };
            auth.apply_jobs(tasks)
                .await
                .into_iter()
                .map(|result| result.map_err(failure))
                .collect()
        })
    }
}

fn failure(error: AuthError) -> TaskFailure {
    TaskFailure {
        permanent: matches!(error, AuthError::BadRequest(_)),
        error: error.to_string(),
    }
}

fn stopping() -> TaskFailure {
    TaskFailure {
        error: "authentication is stopping".to_owned(),
        permanent: false,
    }
}
