//! The audit trail and the other work a login need not wait for.
//!
//! Each event is written as a JSON log line at once (target `audit`, OWASP's logging vocabulary:
//! `authn_login_success`, `authn_login_fail`, `authn_login_lock`, `authn_token_reuse`,
//! `authn_logout`, `authz_fail`, `user_created`, `user_updated`, `user_deleted`,
//! `role_updated`, `session_revoked`), and queued with `last_login` and lockout writes for the
//! database. The queue is bounded and in process: a full queue drops the database write and
//! counts it (the log line is already out), it never blocks a request. The durable task queue
//! of the alerting work can take its place behind [`Background::send`].
//!
//! Never a password or a token in either: names, addresses and session ids only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::users::Directory;

/// Jobs waiting at most, before new ones are dropped.
const QUEUE: usize = 4096;

/// One job for the database.
#[derive(Debug)]
pub enum Job {
    /// An audit event.
    Audit {
        /// When (Unix milliseconds).
        at: i64,
        /// OWASP's name for it.
        event: &'static str,
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
    /// Wakes the caller once every job before it is written (tests, shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The background queue and its writer task.
#[derive(Debug, Clone)]
pub struct Background {
    sender: mpsc::Sender<Job>,
    figures: Arc<crate::AuthFigures>,
}

impl Background {
    /// Starts the writer on `directory`, counting drops into `figures`; it ends when every
    /// sender is gone.
    pub fn start(directory: Directory, figures: Arc<crate::AuthFigures>) -> Self {
        let (sender, mut receiver) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            while let Some(job) = receiver.recv().await {
                let result = match job {
                    Job::Audit {
                        at,
                        event,
                        username,
                        client_ip,
                        detail,
                    } => {
                        directory
                            .audit(
                                at,
                                event,
                                username.as_deref(),
                                client_ip.as_deref(),
                                detail.as_deref(),
                            )
                            .await
                    }
                    Job::LastLogin { user_id, at } => directory.set_last_login(user_id, at).await,
                    Job::LockedUntil { username, until } => {
                        directory.set_locked_until(&username, until).await
                    }
                    Job::Flush(done) => {
                        let _ = done.send(());
                        Ok(())
                    }
                };
                if let Err(error) = result {
                    tracing::warn!(%error, "auth background write failed");
                }
            }
        });
        Self { sender, figures }
    }

    /// Queues `job`; drops it (and counts) when the queue is full.
    pub fn send(&self, job: Job) {
        if self.sender.try_send(job).is_err() {
            self.figures
                .background_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Jobs dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.figures.background_dropped.load(Ordering::Relaxed)
    }

    /// Waits until every job queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.sender.send(Job::Flush(done)).await.is_ok() {
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
    ) {
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
            event,
            username: username.map(str::to_owned),
            client_ip: client_ip.map(str::to_owned),
            detail,
        });
    }
}
