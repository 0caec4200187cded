//! The outbox's side of background tasks (`crate::tasks`): writing them, running a claimed
//! batch through its handler's runner, recording them done, and waiting for them at a stop.

use sekisho_db::{now_millis, DbError};

use super::Outbox;
use crate::tasks::{Task, TaskFailure, TaskRunner, TASK_CHANNEL};

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

impl Outbox {
    /// Runs the tasks of `handler` with `runner` from now on (replacing an earlier one).
    pub fn add_runner(&self, handler: &str, runner: std::sync::Arc<dyn TaskRunner>) {
        self.runners().insert(handler, runner);
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
