//! The open model: request `i` is due at `start + i / rate`, whatever happened to the ones
//! before it.
//!
//! One dispatcher wakes for each due time (or, at rates beyond the timer's millisecond, for a
//! batch of them) and spawns each due request as its own task with its intended time. A
//! request's latency runs from that intended time, so a server that stalls is charged the stall
//! for every request that fell due during it, and a generator that falls behind is charged its
//! own lateness too (it shows in the sent rate as well). At most `max_outstanding` requests are
//! in flight: one due beyond that is not sent and is counted as an `unsent` error rather than
//! queued, so a stalled server cannot make the generator hold unbounded memory, and a run whose
//! generator could not keep up does not pass.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::recorder::Recorder;
use super::{arrival_order, Endpoint, LoadClient};

/// The open model's numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub rate: f64,
    pub max_outstanding: usize,
    pub duration: Duration,
    /// How long to wait for the requests in flight once the schedule is done.
    pub drain: Duration,
}

/// Runs the schedule; the time from the start to the last dispatch, and whether `stop` ended it.
pub(crate) async fn run(
    client: &LoadClient,
    endpoints: &Arc<[Endpoint]>,
    recorder: &Arc<Recorder>,
    schedule: Schedule,
    stop: impl Future<Output = ()>,
) -> (Duration, bool) {
    let start = recorder.start();
    let order = arrival_order(endpoints);
    // The number of requests due within the duration: those with i / rate < duration.
    let total = (schedule.duration.as_secs_f64() * schedule.rate).ceil() as u64;
    let max_outstanding = schedule.max_outstanding.min(Semaphore::MAX_PERMITS);
    let outstanding = Arc::new(Semaphore::new(max_outstanding));
    let due_at = |index: u64| start + Duration::from_secs_f64(index as f64 / schedule.rate);
    let mut next: u64 = 0;
    let mut stopped = false;
    tokio::pin!(stop);
    while next < total {
        let elapsed = start.elapsed().as_secs_f64();
        // Every request whose time has come, in order, each with its own intended time.
        let due = ((elapsed * schedule.rate).floor() as u64 + 1).min(total);
        while next < due {
            let intended = due_at(next);
            let endpoint = order[(next % order.len() as u64) as usize];
            match Arc::clone(&outstanding).try_acquire_owned() {
                Ok(permit) => {
                    let client = client.clone();
                    let endpoints = Arc::clone(endpoints);
                    let recorder = Arc::clone(recorder);
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let (outcome, answered) = client.exchange(&endpoints[endpoint]).await;
                        recorder.record(endpoint, intended, sent, answered, &outcome);
                        drop(permit);
                    });
                }
                Err(_) => recorder.unsent(endpoint, intended),
            }
            next += 1;
        }
        if next >= total {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due_at(next)) => {}
            () = &mut stop => {
                stopped = true;
                break;
            }
        }
    }
    let dispatch_time = start.elapsed();
    // Every request holds a permit until it is recorded: all permits back means all recorded.
    // Each request is bounded by the client's timeout, so this wait is too.
    let all = u32::try_from(max_outstanding).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(schedule.drain, outstanding.acquire_many(all)).await;
    (dispatch_time, stopped)
}
