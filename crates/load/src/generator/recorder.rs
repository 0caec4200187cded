//! What every request of a run came to: latency histograms (HDR), status and error counts per
//! endpoint, and a timeline of one-second buckets for the report's plots.
//!
//! Latency is measured from the request's *intended* send time (its place in the schedule), so a
//! request that had to wait for the generator or for a connection is charged that wait; the
//! time from the actual send is kept beside it as the service time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An answer, read to its end. `code` is the gateway's contract code (`error.code` of a JSON
    /// error body), when the answer was an error and carried one.
    Answered { status: u16, code: Option<String> },
    /// No answer within the request timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The connection broke (reset, closed early, protocol error).
    Transport,
}

/// Significant figures of the whole-run histograms: 0.1 % precision.
const RUN_FIGURES: u8 = 3;
/// Significant figures of the one-second histograms of the timeline: 1 % is enough for a plot
/// and keeps each bucket small.
const SECOND_FIGURES: u8 = 2;

/// Microseconds, at least 1 (a histogram's lowest value).
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One endpoint's figures for the whole run.
#[derive(Debug)]
pub(crate) struct EndpointFigures {
    /// Latency from the intended send time, microseconds.
    pub latency: Histogram<u64>,
    /// Latency from the actual send, microseconds.
    pub service: Histogram<u64>,
    /// Requests the schedule asked for (sent or not).
    pub scheduled: u64,
    /// Requests sent.
    pub sent: u64,
    /// Requests answered (any status).
    pub answered: u64,
    /// Requests that failed the endpoint's expectation (status, transport, timeout, unsent).
    pub errors: u64,
    pub timeouts: u64,
    /// Requests not sent because the outstanding limit was reached.
    pub unsent: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// When the first answer with each contract code came, from the start of the run.
    pub first_code: BTreeMap<String, Duration>,
    /// The same, counting only answers that came after the mark (see [`Recorder::mark`]).
    pub first_code_after_mark: BTreeMap<String, Duration>,
}

impl EndpointFigures {
    fn new(template: &Histogram<u64>) -> Self {
        Self {
            latency: Histogram::new_from(template),
            service: Histogram::new_from(template),
            scheduled: 0,
            sent: 0,
            answered: 0,
            errors: 0,
            timeouts: 0,
            unsent: 0,
            statuses: BTreeMap::new(),
            errors_by_kind: BTreeMap::new(),
            first_code: BTreeMap::new(),
            first_code_after_mark: BTreeMap::new(),
        }
    }
}

/// One endpoint's figures for one second of the run.
#[derive(Debug)]
pub(crate) struct SecondFigures {
    /// Latency of the requests whose intended send time fell in this second.
    pub latency: Histogram<u64>,
    /// Requests scheduled in this second.
    pub scheduled: u64,
    /// Requests completed (answered or failed) in this second.
    pub completed: u64,
    /// Requests answered with an accepted status in this second.
    pub succeeded: u64,
    /// Errors by kind, by the second they were scheduled in.
    pub errors_by_kind: BTreeMap<String, u64>,
}

impl SecondFigures {
    fn new(template: &Histogram<u64>) -> Self {
        Self {
            latency: Histogram::new_from(template),
            scheduled: 0,
            completed: 0,
            succeeded: 0,
            errors_by_kind: BTreeMap::new(),
        }
    }
}

/// Everything recorded, handed over at the end of a run.
#[derive(Debug)]
pub(crate) struct Recorded {
    pub endpoints: Vec<EndpointFigures>,
    /// `timeline[second][endpoint]`.
    pub timeline: Vec<Vec<SecondFigures>>,
}

/// What the progress line shows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProgressFigures {
    /// Judged requests completed.
    pub completed: u64,
    /// Requests completed, every endpoint.
    pub completed_all: u64,
    pub errors: u64,
    pub p99: Duration,
}

#[derive(Debug)]
struct Inner {
    recorded: Recorded,
    /// Every judged endpoint's latency together, for the progress line.
    all: Histogram<u64>,
    /// Judged requests completed.
    completed: u64,
    /// Requests completed, every endpoint.
    completed_all: u64,
    errors: u64,
    /// From when answers' codes count for `first_code_after_mark`.
    mark: Option<Instant>,
}

/// The run's record, shared by every request task.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    accept: Vec<(u16, u16)>,
    judged: Vec<bool>,
    /// An empty one-second histogram, copied for each new bucket.
    second_template: Histogram<u64>,
    inner: Mutex<Inner>,
}

impl Recorder {
    /// A recorder for endpoints whose accepted statuses are `accept[i]` (inclusive range) and
    /// which count towards the criteria when `judged[i]`.
    pub(crate) fn new(
        start: Instant,
        accept: Vec<(u16, u16)>,
        judged: Vec<bool>,
    ) -> Result<Self, hdrhistogram::CreationError> {
        // Auto-resizing histograms only grow as far as the largest value they have seen, so a
        // bucket of fast answers stays a few kilobytes.
        let run_template = Histogram::new(RUN_FIGURES)?;
        let second_template = Histogram::new(SECOND_FIGURES)?;
        let endpoints = accept
            .iter()
            .map(|_| EndpointFigures::new(&run_template))
            .collect();
        Ok(Self {
            start,
            accept,
            judged,
            inner: Mutex::new(Inner {
                recorded: Recorded {
                    endpoints,
                    timeline: Vec::new(),
                },
                all: Histogram::new_from(&second_template),
                completed: 0,
                completed_all: 0,
                errors: 0,
                mark: None,
            }),
            second_template,
        })
    }

    /// When the run started.
    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn second_of(&self, at: Instant) -> usize {
        usize::try_from(at.saturating_duration_since(self.start).as_secs()).unwrap_or(usize::MAX)
    }

    /// A request the schedule asked for but the generator did not send (too many outstanding).
    pub(crate) fn unsent(&self, endpoint: usize, intended: Instant) {
        let second = self.second_of(intended);
        let judged = self.judged.get(endpoint).copied().unwrap_or(false);
        let mut inner = self.lock();
        let Some(figures) = inner.recorded.endpoints.get_mut(endpoint) else {
            return;
        };
        figures.scheduled += 1;
        figures.unsent += 1;
        figures.errors += 1;
        *figures
            .errors_by_kind
            .entry("unsent".to_owned())
            .or_insert(0) += 1;
        let bucket = bucket(
            &mut inner.recorded.timeline,
            &self.second_template,
            second,
            endpoint,
        );
        bucket.scheduled += 1;
        *bucket
            .errors_by_kind
            .entry("unsent".to_owned())
            .or_insert(0) += 1;
        if judged {
            inner.errors += 1;
        }
    }

    /// A request sent at `sent` for its place `intended` in the schedule, which ended at
    /// `finished` with `outcome`. Returns whether it met the endpoint's expectation.
    pub(crate) fn record(
        &self,
        endpoint: usize,
        intended: Instant,
        sent: Instant,
        finished: Instant,
        outcome: &Outcome,
    ) -> bool {
        let latency = micros(finished.saturating_duration_since(intended));
        let service = micros(finished.saturating_duration_since(sent));
        let (low, high) = self.accept.get(endpoint).copied().unwrap_or((200, 399));
        let judged = self.judged.get(endpoint).copied().unwrap_or(false);
        let error_kind = match outcome {
            Outcome::Answered { status, .. } if (low..=high).contains(status) => None,
            Outcome::Answered { status, code } => Some(match code {
                Some(code) => format!("{status} {code}"),
                None => format!("{status}"),
            }),
            Outcome::Timeout => Some("timeout".to_owned()),
            Outcome::Connect => Some("connect".to_owned()),
            Outcome::Transport => Some("transport".to_owned()),
        };
        let scheduled_second = self.second_of(intended);
        let finished_second = self.second_of(finished);
        let since_start = finished.saturating_duration_since(self.start);
        let mut inner = self.lock();
        let after_mark = inner.mark.is_some_and(|mark| finished >= mark);
        let Some(figures) = inner.recorded.endpoints.get_mut(endpoint) else {
            return false;
        };
        figures.scheduled += 1;
        figures.sent += 1;
        // Fast transport failures carry no latency worth keeping (a refused connection would
        // drag the percentiles down); a timeout's latency is at least the timeout, and is kept.
        let timed = matches!(outcome, Outcome::Answered { .. } | Outcome::Timeout);
        if timed {
            let _ = figures.latency.record(latency);
            let _ = figures.service.record(service);
        }
        match outcome {
            Outcome::Answered { status, code } => {
                figures.answered += 1;
                *figures.statuses.entry(*status).or_insert(0) += 1;
                if let Some(code) = code {
                    figures
                        .first_code
                        .entry(code.clone())
                        .or_insert(since_start);
                    if after_mark {
                        figures
                            .first_code_after_mark
                            .entry(code.clone())
                            .or_insert(since_start);
                    }
                }
            }
            Outcome::Timeout => figures.timeouts += 1,
            Outcome::Connect | Outcome::Transport => {}
        }
        if let Some(kind) = &error_kind {
            figures.errors += 1;
            *figures.errors_by_kind.entry(kind.clone()).or_insert(0) += 1;
        }
        let scheduled = bucket(
            &mut inner.recorded.timeline,
            &self.second_template,
            scheduled_second,
            endpoint,
        );
        scheduled.scheduled += 1;
        if timed {
            let _ = scheduled.latency.record(latency);
        }
        if let Some(kind) = &error_kind {
            *scheduled.errors_by_kind.entry(kind.clone()).or_insert(0) += 1;
        }
        let completed = bucket(
            &mut inner.recorded.timeline,
            &self.second_template,
            finished_second,
            endpoint,
        );
        completed.completed += 1;
        if error_kind.is_none() {
            completed.succeeded += 1;
        }
        inner.completed_all += 1;
        if judged {
            inner.completed += 1;
            if timed {
                let _ = inner.all.record(latency);
            }
            if error_kind.is_some() {
                inner.errors += 1;
            }
        }
        error_kind.is_none()
    }

    /// Answers' codes count for `first_code_after_mark` from now on (the moment a scenario
    /// changed something, e.g. slowed an upstream).
    pub(crate) fn mark(&self) {
        self.lock().mark = Some(Instant::now());
    }

    /// The figures of the progress line.
    pub(crate) fn progress(&self) -> ProgressFigures {
        let inner = self.lock();
        ProgressFigures {
            completed: inner.completed,
            completed_all: inner.completed_all,
            errors: inner.errors,
            p99: Duration::from_micros(inner.all.value_at_quantile(0.99)),
        }
    }

    /// Everything recorded so far (the run's end).
    pub(crate) fn take(&self) -> Recorded {
        let mut inner = self.lock();
        Recorded {
            endpoints: std::mem::take(&mut inner.recorded.endpoints),
            timeline: std::mem::take(&mut inner.recorded.timeline),
        }
    }
}

/// The bucket of `endpoint` at `second`, creating the seconds up to it.
fn bucket<'a>(
    timeline: &'a mut Vec<Vec<SecondFigures>>,
    template: &Histogram<u64>,
    second: usize,
    endpoint: usize,
) -> &'a mut SecondFigures {
    // A run lasts hours at most; a second index past a day is a clock oddity, kept in the last.
    let second = second.min(86_400);
    while timeline.len() <= second {
        timeline.push(Vec::new());
    }
    let row = &mut timeline[second];
    while row.len() <= endpoint {
        row.push(SecondFigures::new(template));
    }
    &mut row[endpoint]
}
