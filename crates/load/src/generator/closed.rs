//! The closed model: `users` users, each sending one request, waiting for its answer, then
//! thinking before the next. The basis of user journeys.
//!
//! A closed user measures from the actual send: while the server stalls, a user waits and sends
//! nothing, so the stall costs one slow request per user however long it lasts. That is what a
//! closed-loop tool reports for a stalled server, and why the plain scenarios use the open model.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::recorder::Recorder;
use super::{arrival_order, Endpoint, LoadClient};

/// The closed model's numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Users {
    pub users: usize,
    pub think_min: Duration,
    pub think_max: Duration,
    pub duration: Duration,
    /// How long to wait for the requests in flight once the duration is over.
    pub drain: Duration,
}

/// Runs the users until the duration is over; the duration (or the time to `stop`), and whether
/// `stop` ended it.
pub(crate) async fn run(
    client: &LoadClient,
    endpoints: &Arc<[Endpoint]>,
    recorder: &Arc<Recorder>,
    users: Users,
    stop: impl Future<Output = ()>,
) -> (Duration, bool) {
    let start = recorder.start();
    let end = start + users.duration;
    let order: Arc<[usize]> = arrival_order(endpoints).into();
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..users.users {
        let client = client.clone();
        let endpoints = Arc::clone(endpoints);
        let recorder = Arc::clone(recorder);
        let order = Arc::clone(&order);
        let stop_seen = stop_seen.clone();
        tasks.spawn(async move {
            // Users start at different places in the arrival order, so they do not all call
            // the same endpoint at the same time.
            let mut turn = user;
            while Instant::now() < end && !*stop_seen.borrow() {
                let endpoint = order[turn % order.len()];
                turn += 1;
                let sent = Instant::now();
                let (outcome, answered) = client.exchange(&endpoints[endpoint]).await;
                recorder.record(endpoint, sent, sent, answered, &outcome);
                let think = think_time(users.think_min, users.think_max);
                if !think.is_zero() {
                    tokio::time::sleep(think.min(end.saturating_duration_since(Instant::now())))
                        .await;
                }
            }
        });
    }
    tokio::pin!(stop);
    let stopped = tokio::select! {
        () = tokio::time::sleep_until(end) => false,
        () = &mut stop => true,
    };
    let dispatch_time = start.elapsed();
    stopping.send_replace(true);
    // Each user's last request is bounded by the client's timeout.
    let _ = tokio::time::timeout(users.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    (dispatch_time, stopped)
}

/// A think time drawn uniformly between `min` and `max`.
fn think_time(min: Duration, max: Duration) -> Duration {
    if max <= min {
        return min;
    }
    min + (max - min).mul_f64(fastrand::f64())
}
