//! The decisions of one event-loop turn, sent to Redis together.
//!
//! Every [`RedisLimiter::decide`](super::RedisLimiter::decide) hands its script call to one
//! driver task per limiter instead of sending it alone. The driver wakes on the first call,
//! yields once so that every request the runtime polls in the same turn can add its own, then
//! takes all that are queued (at most [`MAX_BATCH`]) as one pipeline of `EVALSHA`s: one write
//! and one read on the gateway and on Redis for the whole turn, one timeout per batch instead of
//! one timer per decision. Each batch runs on a task of its own, so the next turn's calls never
//! wait behind the previous turn's round trip.
//!
//! Exactness is unchanged: Redis still runs each script atomically, in the order sent; a
//! pipeline only puts the calls on the wire together. A script Redis does not know (`NOSCRIPT`,
//! after a restart or a failover) is loaded and the calls that met it are sent again.

use redis::aio::ConnectionManager;
use redis::{Cmd, Pipeline, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use super::Scripts;
use crate::StoreError;

/// The most calls in one pipeline (a larger turn makes several).
pub(super) const MAX_BATCH: usize = 256;

/// One script call waiting for its batch: the `EVALSHA` command and where its answer goes.
pub(super) struct Job {
    pub(super) command: Cmd,
    pub(super) reply: oneshot::Sender<Result<Value, StoreError>>,
}

/// The sending side of a limiter's driver.
pub(super) type Queue = mpsc::UnboundedSender<Job>;

/// Pipelines sent and the calls they carried, since the limiter was made.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) batches: AtomicU64,
    pub(super) calls: AtomicU64,
}

/// Starts the driver of a limiter on the current runtime; it ends when every [`Queue`] is gone.
pub(super) fn start(
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    timeout: Duration,
    counts: Arc<Counts>,
) -> Queue {
    let (queue, jobs) = mpsc::unbounded_channel();
    tokio::spawn(drive(jobs, conn, scripts, timeout, counts));
    queue
}

async fn drive(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    timeout: Duration,
    counts: Arc<Counts>,
) {
    while let Some(first) = jobs.recv().await {
        // Let the rest of this turn's requests queue their calls behind the first.
        tokio::task::yield_now().await;
        let mut batch = Vec::with_capacity(jobs.len().min(MAX_BATCH - 1) + 1);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        counts.batches.fetch_add(1, Ordering::Relaxed);
        counts
            .calls
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        tokio::spawn(send(conn.clone(), scripts.clone(), batch, timeout));
    }
}

/// Sends one batch and answers each of its calls, all within `timeout`.
async fn send(
    mut conn: ConnectionManager,
    scripts: Arc<Scripts>,
    batch: Vec<Job>,
    timeout: Duration,
) {
    let (commands, replies): (Vec<Cmd>, Vec<_>) = batch
        .into_iter()
        .map(|job| (job.command, job.reply))
        .unzip();
    let answered = tokio::time::timeout(timeout, run(&mut conn, &scripts, commands)).await;
    match answered {
        Ok(Ok(values)) => {
            for (reply, value) in replies.into_iter().zip(values) {
                let _ = reply.send(value);
            }
        }
        Ok(Err(error)) => {
            let (kind, text) = (error.kind(), error.to_string());
            for reply in replies {
                let each = redis::RedisError::from((kind, "redis pipeline failed", text.clone()));
                let _ = reply.send(Err(StoreError::Redis(each)));
            }
        }
        Err(_) => {
            for reply in replies {
                let _ = reply.send(Err(StoreError::Timeout(timeout)));
            }
        }
    }
}

/// The answer of each command, in order: a server error stays that command's own error.
async fn run(
    conn: &mut ConnectionManager,
    scripts: &Scripts,
    commands: Vec<Cmd>,
) -> redis::RedisResult<Vec<Result<Value, StoreError>>> {
    let count = commands.len();
    let mut pipeline = Pipeline::with_capacity(count);
    for command in commands {
        pipeline.add_command(command);
    }
    let values = conn.send_packed_commands(&pipeline, 0, count).await?;
    let mut answers: Vec<Result<Value, StoreError>> = values.into_iter().map(answer).collect();
    let again: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a, Err(StoreError::Redis(e)) if e.kind() == redis::ErrorKind::NoScriptError))
        .map(|(i, _)| i)
        .collect();
    if again.is_empty() {
        return Ok(answers);
    }
    scripts.load(conn).await?;
    let mut retry = Pipeline::with_capacity(again.len());
    for command in pipeline
        .cmd_iter()
        .enumerate()
        .filter(|(i, _)| again.contains(i))
    {
        retry.add_command(command.1.clone());
    }
    let values = conn.send_packed_commands(&retry, 0, again.len()).await?;
    for (index, value) in again.into_iter().zip(values) {
        answers[index] = answer(value);
    }
    Ok(answers)
}

fn answer(value: Value) -> Result<Value, StoreError> {
    match value {
        Value::ServerError(error) => Err(StoreError::Redis(error.into())),
        value => Ok(value),
    }
}
