//! The audit trail and the other work a login need not wait for.
//!
//! Each event is written as a JSON log line at once (target `audit`, OWASP's logging vocabulary:
//! `authn_login_success`, `authn_login_fail`, `authn_login_lock`, `authn_token_reuse`,
//! `authn_logout`, `authz_fail`, `user_created`, `user_updated`, `user_deleted`,
//! `role_updated`, `session_revoked`), and queued with `last_login` and lockout writes as
//! [`Job`]s. One writer task takes the queue in batches:
//!
//! - with a [`JobStore`] attached (the binary attaches the durable task queue, the notification
//!   outbox of `sekisho-monitor`), each batch is written there in one transaction, and applied
//!   later by the queue's worker through [`Auth::apply_job`](crate::Auth::apply_job) — with its
//!   retries, so a database that refuses a write for a while, or a gateway killed with -9,
//!   loses nothing once the batch is stored;
//! - without one (the library on its own, its tests), each job is applied at once.
//!
//! The queue is bounded and in process: a full queue drops the job and counts it (the log line
//! is already out), it never blocks a request. Who must know the job is stored before it
//! answers (a login, a logout) awaits the [`Written`] receipt, bounded by [`DURABLE_WAIT`].
//!
//! Never a password or a token in either: names, addresses and session ids only.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::users::Directory;
use crate::AuthError;

/// Jobs waiting at most, before new ones are dropped.
const QUEUE: usize = 4096;
/// Jobs written to the store in one batch at most.
const BATCH: usize = 256;
/// How long a caller waits for its job to be stored before it answers anyway (the job stays
/// queued).
pub const DURABLE_WAIT: Duration = Duration::from_secs(2);
/// The first wait after the store refused a batch, doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One job for the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum Job {
    /// An audit event.
    Audit {
        /// When (Unix milliseconds).
        at: i64,
        /// OWASP's name for it.
        event: String,
        /// Whose.
        username: Option<String>,
        /// From where.
        client_ip: Option<String>,
        /// More (never a secret).
        detail: Option<String>,
    },
    /// A user logged in.
    LastLogin {
        /// The user.
        user_id: i64,
        /// When.
        at: i64,
    },
    /// An account was locked until then (or unlocked, with `None`).
    LockedUntil {
        /// The account.
        username: String,
        /// When the lockout ends.
        until: Option<i64>,
    },
}

impl Job {
    /// Its kind, as the task queue shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Audit { .. } => "audit",
            Self::LastLogin { .. } => "last_login",
            Self::LockedUntil { .. } => "locked_until",
        }
    }

    /// Its stored form (JSON), as [`crate::Auth::apply_job`] reads it.
    pub fn payload(&self) -> Result<String, String> {
        serde_json::to_string(self).map_err(|error| error.to_string())
    }

    /// The jobs this one must not overtake share its order key: the writes to one user's
    /// `last_login` or `locked_until` are applied in the order they were made; audit rows carry
    /// their own time and need no order (`None`).
    pub fn order_key(&self) -> Option<String> {
        match self {
            Self::Audit { .. } => None,
            Self::LastLogin { user_id, .. } => Some(format!("last_login:{user_id}")),
            Self::LockedUntil { username, .. } => Some(format!("locked_until:{username}")),
        }
    }

    /// Applies it to `directory`; `task` is the id of the stored task it came from, so that an
    /// audit row applied twice (a worker killed between the write and its record) is one row.
    pub async fn apply(&self, directory: &Directory, task: Option<i64>) -> Result<(), AuthError> {
        apply_in_one(directory, &[(task, self.clone())]).await
    }
}

/// Applies `jobs` (each with the id of its stored task, if any) in one transaction — the audit
/// rows as one multi-row insert — or, when that transaction fails, one by one, so that a job the
/// database refuses does not hold the others back. The result of each, in order.
pub async fn apply_all(
    directory: &Directory,
    jobs: &[(Option<i64>, Job)],
) -> Vec<Result<(), AuthError>> {
    match apply_in_one(directory, jobs).await {
        Ok(()) => return jobs.iter().map(|_| Ok(())).collect(),
        Err(error) if jobs.len() == 1 => return vec![Err(error)],
        Err(error) => tracing::debug!(%error, "a batch of auth jobs failed; one by one"),
    }
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        results.push(apply_in_one(directory, std::slice::from_ref(job)).await);
    }
    results
}

async fn apply_in_one(directory: &Directory, jobs: &[(Option<i64>, Job)]) -> Result<(), AuthError> {
    use sekisho_db::sqlx;
    let mut transaction = directory.database().pool().begin().await?;
    let audits: Vec<(&Option<i64>, &Job)> = jobs
        .iter()
        .filter(|(_, job)| matches!(job, Job::Audit { .. }))
        .map(|(task, job)| (task, job))
        .collect();
    if !audits.is_empty() {
        let rows: Vec<String> = (0..audits.len())
            .map(|n| {
                let b = n * 6;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6
                )
            })
            .collect();
        let text = format!(
            "INSERT INTO audit_log (at, event, username, client_ip, detail, task_id) VALUES {} \
             ON CONFLICT (task_id) DO NOTHING",
            rows.join(", ")
        );
        let mut query = sqlx::query(&text);
        for (task, job) in &audits {
            if let Job::Audit {
                at,
                event,
                username,
                client_ip,
                detail,
            } = job
            {
                query = query
                    .bind(*at)
                    .bind(event.as_str())
                    .bind(username.as_deref())
                    .bind(client_ip.as_deref())
                    .bind(detail.as_deref())
                    .bind(**task);
            }
        }
        query.execute(&mut *transaction).await?;
    }
    for (_, job) in jobs {
        match job {
            Job::Audit { .. } => {}
            Job::LastLogin { user_id, at } => {
                sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
                    .bind(*at)
                    .bind(*user_id)
                    .execute(&mut *transaction)
                    .await?;
            }
            Job::LockedUntil { username, until } => {
                sqlx::query(crate::users::SET_LOCKED_UNTIL)
                    .bind(*until)
                    .bind(username.as_str())
                    .execute(&mut *transaction)
                    .await?;
            }
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// Where batches of jobs are made durable before they are applied.
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Stores `jobs` (all or none); an error is retried.
    fn store<'a>(
        &'a self,
        jobs: &'a [Job],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// A message of the queue.
#[derive(Debug)]
enum Queued {
    Job(Job, Option<oneshot::Sender<()>>),
    /// Answered once every job before it is stored (tests, shutdown).
    Flush(oneshot::Sender<()>),
}

/// Answered when the job is stored (or applied, without a store); see [`Written::wait`].
#[derive(Debug)]
pub struct Written(Option<oneshot::Receiver<()>>);

impl Written {
    /// Waits until the job is stored, at most [`DURABLE_WAIT`]; a job dropped because the queue
    /// was full answers at once. Whether it was stored in time.
    pub async fn wait(self) -> bool {
        match self.0 {
            Some(receiver) => matches!(
                tokio::time::timeout(DURABLE_WAIT, receiver).await,
                Ok(Ok(()))
            ),
            None => false,
        }
    }
}

/// The background queue and its writer task.
#[derive(Debug, Clone)]
pub struct Background {
    sender: mpsc::Sender<Queued>,
    store: Arc<OnceLock<Arc<dyn JobStore>>>,
    figures: Arc<crate::AuthFigures>,
}

impl Background {
    /// Starts the writer on `directory`, counting drops into `figures`; it ends when every
    /// sender is gone.
    pub fn start(directory: Directory, figures: Arc<crate::AuthFigures>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let store: Arc<OnceLock<Arc<dyn JobStore>>> = Arc::default();
        tokio::spawn(write(receiver, directory, Arc::clone(&store)));
        Self {
            sender,
            store,
            figures,
        }
    }

    /// Sends the jobs queued from now on (and those still waiting) to `store` instead of
    /// applying them; once only (a second store is refused: false).
    pub fn attach(&self, store: Arc<dyn JobStore>) -> bool {
        self.store.set(store).is_ok()
    }

    /// Queues `job`; drops it (and counts) when the queue is full.
    pub fn send(&self, job: Job) -> Written {
        let (done, receipt) = oneshot::channel();
        match self.sender.try_send(Queued::Job(job, Some(done))) {
            Ok(()) => Written(Some(receipt)),
            Err(_) => {
                self.figures
                    .background_dropped
                    .fetch_add(1, Ordering::Relaxed);
                Written(None)
            }
        }
    }

    /// Jobs dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.figures.background_dropped.load(Ordering::Relaxed)
    }

    /// Waits until every job queued before this call is stored (or applied, without a store).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Queued::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Logs `event` as a JSON line now and queues it for the audit table.
    pub fn audit(
        &self,
        event: &'static str,
        username: Option<&str>,
        client_ip: Option<&str>,
        detail: Option<String>,
    ) -> Written {
        tracing::info!(
            target: "audit",
            event,
            user = username.unwrap_or(""),
            client_ip = client_ip.unwrap_or(""),
            detail = detail.as_deref().unwrap_or(""),
            "audit"
        );
        self.send(Job::Audit {
            at: sekisho_db::now_millis(),
            event: event.to_owned(),
            username: username.map(str::to_owned),
            client_ip: client_ip.map(str::to_owned),
            detail,
        })
    }
}

/// The writer: takes the queue in batches, stores or applies each, then answers its receipts.
async fn write(
    mut receiver: mpsc::Receiver<Queued>,
    directory: Directory,
    store: Arc<OnceLock<Arc<dyn JobStore>>>,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let jobs: Vec<Job> = batch
            .iter()
            .filter_map(|queued| match queued {
                Queued::Job(job, _) => Some(job.clone()),
                Queued::Flush(_) => None,
            })
            .collect();
        if !jobs.is_empty() {
            match store.get() {
                Some(store) => store_batch(store.as_ref(), &jobs).await,
                None => {
                    let batch: Vec<(Option<i64>, Job)> =
                        jobs.into_iter().map(|job| (None, job)).collect();
                    for (result, (_, job)) in apply_all(&directory, &batch).await.iter().zip(&batch)
                    {
                        if let Err(error) = result {
                            tracing::warn!(%error, kind = job.kind(), "auth background write failed");
                        }
                    }
                }
            }
        }
        for queued in batch.drain(..) {
            let done = match queued {
                Queued::Job(_, done) => done,
                Queued::Flush(done) => Some(done),
            };
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    }
}

/// Stores `jobs`, retrying until the store takes them: what is queued meanwhile waits (and a
/// full queue drops new jobs, counted), nothing already accepted is given up.
async fn store_batch(store: &dyn JobStore, jobs: &[Job]) {
    let mut wait = RETRY_FIRST;
    loop {
        match store.store(jobs).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, jobs = jobs.len(), retry_in = ?wait, "cannot store the auth background jobs; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_keep_their_fields_through_the_stored_form() {
        let jobs = [
            Job::Audit {
                at: 5,
                event: "authn_login_fail".to_owned(),
                username: Some("ann".to_owned()),
                client_ip: None,
                detail: Some("wrong password".to_owned()),
            },
            Job::LastLogin { user_id: 7, at: 9 },
            Job::LockedUntil {
                username: "bob".to_owned(),
                until: None,
            },
        ];
        for job in jobs {
            let text = serde_json::to_string(&job).unwrap_or_default();
            let back: Option<Job> = serde_json::from_str(&text).ok();
            assert_eq!(back.as_ref(), Some(&job), "{text}");
        }
    }

    #[test]
    fn only_writes_to_one_user_are_ordered() {
        let audit = Job::Audit {
            at: 1,
            event: "authn_logout".to_owned(),
            username: Some("ann".to_owned()),
            client_ip: None,
            detail: None,
        };
        assert_eq!(audit.order_key(), None);
        assert_eq!(
            Job::LastLogin { user_id: 3, at: 1 }.order_key().as_deref(),
            Some("last_login:3")
        );
        assert_eq!(
            Job::LockedUntil {
                username: "ann".to_owned(),
                until: Some(2)
            }
            .order_key()
            .as_deref(),
            Some("locked_until:ann")
        );
    }
}
