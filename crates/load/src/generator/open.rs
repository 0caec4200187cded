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
//!
//! Over HTTP/1.1 the arrivals can instead be shared out among the connections, each connection
//! a task sending its own share ([`run_per_connection`], `--per-connection`): less work per
//! request, at the price of a slow answer delaying its connection's next arrivals.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::client;
use super::h1_pool::H1Pool;
use super::recorder::{Outcome, Recorder};
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

/// The per-connection dispatch's numbers (HTTP/1.1 only).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PerConnection {
    pub rate: f64,
    pub duration: Duration,
    /// Connections, each with its own task and its share of the arrivals.
    pub connections: usize,
    /// A request's bound, counted from its intended time.
    pub timeout: Duration,
}

/// Runs the schedule with one task per connection: arrival `i` belongs to connection
/// `i mod connections`, whose task sends it at its time, or as soon as the connection's
/// previous answer came (the wait is charged to it: latency still runs from the intended time).
/// No dispatcher, no task per request, no shared pool: each task keeps its own connection (made
/// again when the server closed it). The price is wrk2's: a slow answer holds back the rest of
/// its connection's share while other connections may be idle. A request still waiting for its
/// connection a whole `timeout` after its time is a timeout, not sent, so each task ends within
/// the duration and one timeout. The time from the start to the last send, and whether `stop`
/// ended it.
pub(crate) async fn run_per_connection(
    endpoints: &Arc<[Endpoint]>,
    recorder: &Arc<Recorder>,
    schedule: PerConnection,
    stop: impl Future<Output = ()>,
) -> (Duration, bool) {
    let start = recorder.start();
    let order: Arc<[usize]> = arrival_order(endpoints).into();
    let total = (schedule.duration.as_secs_f64() * schedule.rate).ceil() as u64;
    let connections = (schedule.connections as u64).clamp(1, total.max(1));
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for first in 0..connections {
        let endpoints = Arc::clone(endpoints);
        let recorder = Arc::clone(recorder);
        let order = Arc::clone(&order);
        let mut stop_seen = stop_seen.clone();
        tasks.spawn(async move {
            let pool = H1Pool::new(schedule.timeout);
            let mut last_send = None;
            let mut index = first;
            while index < total {
                let intended = start + Duration::from_secs_f64(index as f64 / schedule.rate);
                let endpoint = order[(index % order.len() as u64) as usize];
                index += connections;
                if intended > Instant::now() {
                    tokio::select! {
                        () = tokio::time::sleep_until(intended) => {}
                        _ = stop_seen.wait_for(|stopped| *stopped) => break,
                    }
                } else if *stop_seen.borrow() {
                    break;
                }
                let sent = Instant::now();
                let Some(left) = schedule.timeout.checked_sub(sent - intended) else {
                    // It waited its whole timeout for the connection.
                    recorder.record(endpoint, intended, sent, sent, &Outcome::Timeout);
                    continue;
                };
                last_send = Some(sent);
                let (outcome, answered) =
                    client::exchange_on(&pool, &endpoints[endpoint], left).await;
                recorder.record(endpoint, intended, sent, answered, &outcome);
            }
            last_send
        });
    }
    tokio::pin!(stop);
    let mut stopped = false;
    let mut last_send: Option<Instant> = None;
    let everything = start + schedule.duration + schedule.timeout + Duration::from_secs(1);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(Some(sent))) => last_send = Some(last_send.map_or(sent, |l| l.max(sent))),
                Some(_) => {}
                None => break,
            },
            () = &mut stop, if !stopped => {
                stopped = true;
                stopping.send_replace(true);
            }
            () = tokio::time::sleep_until(everything) => {
                tasks.abort_all();
                break;
            }
        }
    }
    let dispatch_time = last_send.map_or(Duration::ZERO, |sent| sent - start);
    (dispatch_time, stopped)
}
