//! The outbox's delivery worker: claims due rows, POSTs each to its receiver over HTTP or HTTPS
//! (`https.rs`: the system's CA store and the receiver's `ca_file`) or, for an e-mail row, sends
//! it over SMTP, concurrently (up to the settings' concurrency), and records the outcome; every
//! gateway runs one, on SQLite
//! or PostgreSQL alike. It sleeps until a row is written here, an attempt finishes, or the
//! earliest pending row is due (at most [`POLL`], to see rows other gateways wrote).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use sekisho_db::now_millis;
use tokio::task::JoinSet;

use crate::channels::Channel;
use crate::email::Email;
use crate::https::{Clients, DeliveryClient};
use crate::outbox::{Claimed, Counted, Outbox};
use crate::tasks::TASK_CHANNEL;

/// The longest sleep between two looks at the queue.
pub const POLL: Duration = Duration::from_secs(1);
/// Each call's own time limit.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often finished rows past their retention are removed.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// What one attempt came to.
#[derive(Debug)]
enum Outcome {
    Delivered(u16),
    Failed {
        error: String,
        status: Option<u16>,
        permanent: bool,
    },
}

/// Delivers the outbox's rows until the task is dropped or aborted, trusting the system's CA
/// store for `https://` receivers (see [`run_with`] for receivers with a `ca_file`).
pub async fn run(outbox: Outbox) {
    match Clients::system() {
        Ok(clients) => run_with(outbox, clients).await,
        // Nothing is lost: the rows wait in the outbox for a worker that can send them.
        Err(error) => {
            tracing::error!(%error, "cannot make the delivery client; nothing will be delivered")
        }
    }
}

/// Delivers the outbox's rows with `clients` (each receiver's trust) until the task is dropped
/// or aborted.
pub async fn run_with(outbox: Outbox, clients: Clients) {
    let concurrency = outbox.settings().concurrency.max(1);
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut last_purge: Option<Instant> = None;
    loop {
        if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
            last_purge = Some(Instant::now());
            match outbox.purge().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "old notifications removed"),
                Err(error) => tracing::warn!(%error, "cannot remove old notifications"),
            }
        }
        while in_flight.try_join_next().is_some() {}
        let room = concurrency.saturating_sub(in_flight.len());
        // On SQLite a claim takes the database's write lock even when it finds nothing: there,
        // claim only when a row is due, which a read tells without a lock. (On PostgreSQL a
        // claim also takes rows whose claimer is gone before their due time: always claim.)
        let due_now = outbox.database().dialect() == sekisho_db::Dialect::Postgres
            || match outbox.next_due().await {
                Ok(Some(due)) => due <= now_millis(),
                Ok(None) => false,
                Err(_) => true,
            };
        let claimed = if room > 0 && due_now {
            match outbox.claim(room).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim notifications; retrying");
                    outbox.woken(POLL).await;
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        let full = !claimed.is_empty() && claimed.len() == room;
        // Tasks of one handler run together (one call of its runner, one record); each
        // notification is an attempt of its own.
        let mut tasks: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
        for row in claimed {
            if row.channel == TASK_CHANNEL {
                tasks.entry(row.receiver.clone()).or_default().push(row);
                continue;
            }
            let outbox = outbox.clone();
            let client = clients.for_receiver(&row.receiver).clone();
            in_flight.spawn(async move { attempt(&outbox, &client, row).await });
        }
        for (handler, rows) in tasks {
            let outbox = outbox.clone();
            in_flight.spawn(async move { attempt_tasks(&outbox, &handler, rows).await });
        }
        if full {
            continue;
        }
        // Nothing more to take now: wait for a reason to look again.
        let wait = match outbox.next_due().await {
            Ok(Some(due)) => {
                Duration::from_millis(u64::try_from(due - now_millis()).unwrap_or(0)).min(POLL)
            }
            Ok(None) => POLL,
            Err(_) => POLL,
        }
        .max(Duration::from_millis(5));
        if in_flight.is_empty() {
            outbox.woken(wait).await;
        } else {
            tokio::select! {
                _ = in_flight.join_next() => {}
                () = outbox.woken(wait) => {}
            }
        }
    }
}

/// One attempt at tasks of `handler` claimed together, recorded: those done in one statement,
/// each failure as a notification's.
async fn attempt_tasks(outbox: &Outbox, handler: &str, rows: Vec<Claimed>) {
    let started = Instant::now();
    let batch: Vec<(i64, &str)> = rows.iter().map(|r| (r.id, r.payload.as_str())).collect();
    let results = crate::outbox::run_tasks(outbox, handler, &batch).await;
    let latency = started.elapsed();
    let mut done = Vec::with_capacity(rows.len());
    for (row, result) in rows.iter().zip(results) {
        match result {
            Ok(()) => {
                outbox.count(row, Counted::Delivered);
                done.push(row.id);
            }
            Err(failure) => {
                let recorded = outbox
                    .failed(row, &failure.error, None, latency, failure.permanent)
                    .await;
                let counted = if matches!(recorded, Ok(true)) {
                    tracing::error!(id = row.id, %handler, error = %failure.error, "task given up (dead)");
                    Counted::Dead
                } else {
                    tracing::warn!(id = row.id, %handler, error = %failure.error, "task failed; will retry");
                    Counted::Failed
                };
                outbox.count(row, counted);
                if let Err(error) = recorded {
                    tracing::warn!(id = row.id, %error, "cannot record a task's outcome");
                }
            }
        }
    }
    if let Err(error) = outbox.tasks_done(&done, latency).await {
        // Left claimed until the lease ends (or, on PostgreSQL, the claimer is gone), then run
        // again: at least once.
        tracing::warn!(%error, tasks = done.len(), "cannot record tasks done");
    }
}

/// One attempt at `row`, recorded.
async fn attempt(outbox: &Outbox, client: &DeliveryClient, row: Claimed) {
    let started = Instant::now();
    let outcome = if row.channel == Channel::Email.as_str() {
        send_email(&row).await
    } else {
        post(client, &row).await
    };
    let latency = started.elapsed();
    let recorded = match &outcome {
        Outcome::Delivered(status) => {
            outbox.count(&row, Counted::Delivered);
            tracing::info!(id = row.id, receiver = %row.receiver, attempt = row.attempts, "notification delivered");
            outbox.delivered(&row, *status, latency).await
        }
        Outcome::Failed {
            error,
            status,
            permanent,
        } => match outbox
            .failed(&row, error, *status, latency, *permanent)
            .await
        {
            Ok(true) => {
                outbox.count(&row, Counted::Dead);
                tracing::error!(id = row.id, receiver = %row.receiver, attempt = row.attempts, %error, "notification given up (dead)");
                Ok(())
            }
            Ok(false) => {
                outbox.count(&row, Counted::Failed);
                tracing::warn!(id = row.id, receiver = %row.receiver, attempt = row.attempts, %error, "notification failed; will retry");
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    if let Err(error) = recorded {
        // The row stays claimed until its lease ends, then is tried again: at least once.
        tracing::warn!(id = row.id, %error, "cannot record a delivery's outcome");
    }
}

/// An e-mail row: its payload is the whole message ([`Email`]); a 250 is recorded as the
/// status of a delivered one.
async fn send_email(row: &Claimed) -> Outcome {
    let email: Email = match serde_json::from_str(&row.payload) {
        Ok(email) => email,
        Err(error) => {
            return Outcome::Failed {
                error: format!("not an e-mail row: {error}"),
                status: None,
                permanent: true,
            }
        }
    };
    match email.send(CALL_TIMEOUT).await {
        Ok(()) => Outcome::Delivered(250),
        Err(failure) => Outcome::Failed {
            error: failure.error,
            status: None,
            permanent: failure.permanent,
        },
    }
}

async fn post(client: &DeliveryClient, row: &Claimed) -> Outcome {
    let failed = |error: String, status: Option<u16>, permanent: bool| Outcome::Failed {
        error,
        status,
        permanent,
    };
    let request = match http::Request::post(row.url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-sekisho-notification-id", row.id.to_string())
        .body(Full::new(Bytes::from(row.payload.clone())))
    {
        Ok(request) => request,
        Err(error) => return failed(format!("bad request: {error}"), None, true),
    };
    match tokio::time::timeout(CALL_TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) if response.status().is_success() => {
            Outcome::Delivered(response.status().as_u16())
        }
        Ok(Ok(response)) => failed(
            format!("answered {}", response.status()),
            Some(response.status().as_u16()),
            false,
        ),
        Ok(Err(error)) => failed(crate::error_chain(&error), None, false),
        Err(_) => failed(
            format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            None,
            false,
        ),
    }
}
