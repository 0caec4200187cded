//! The load generator: an open model (arrivals on a schedule, whatever the server does) and a
//! closed model (users who wait for each answer and think between requests), both recording into
//! one [`Recorder`](recorder::Recorder).
//!
//! The open model is the honest one for a service: real clients do not wait for each other, so
//! a server that stalls must see the requests pile up, and each request's latency is counted
//! from the moment it was due, not from when a busy generator got round to it (no coordinated
//! omission). The closed model is what user journeys are made of (think times, one request at a
//! time per user); it measures from the actual send, and so cannot see a stall beyond the one
//! request per user it holds.

mod client;
mod closed;
mod h1_pool;
mod open;
pub(crate) mod progress;
pub(crate) mod recorder;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use client::LoadClient;
pub use client::{parse_url, Endpoint, HttpVersion};
pub use progress::Progress;
use recorder::{Recorded, Recorder};

use crate::LoadError;

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// `rate` requests per second on a fixed schedule, at most `max_outstanding` in flight (a
    /// request due while that many are outstanding is not sent and counts as an `unsent` error).
    Open {
        /// Requests per second.
        rate: f64,
        /// Requests in flight at most.
        max_outstanding: usize,
    },
    /// `users` users, each sending a request, waiting for its answer, then thinking for a
    /// uniformly drawn time between `think_min` and `think_max`.
    Closed {
        /// Users at once.
        users: usize,
        /// Shortest think time.
        think_min: Duration,
        /// Longest think time.
        think_max: Duration,
    },
}

/// How the open model's arrivals reach the connections (HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dispatch {
    /// One dispatcher spawns a task per request, which takes a free connection of the shared
    /// pool (waiting for one counts in its latency).
    #[default]
    Shared,
    /// Each connection is a task that sends its own share of the arrivals (arrival `i` on
    /// connection `i mod connections`), as wrk2 does: cheaper per request, but a slow answer
    /// delays its connection's next arrivals while others may be idle.
    PerConnection,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// The requests, each with its share of the arrivals.
    pub endpoints: Vec<Endpoint>,
    /// How they arrive.
    pub model: Model,
    /// How long requests keep arriving.
    pub duration: Duration,
    /// A request without an answer (read to its end) after this is a timeout.
    pub timeout: Duration,
    /// HTTP/1.1 or h2c.
    pub http: HttpVersion,
    /// HTTP/1.1: connections at most (and so requests on the wire at once); a request waits
    /// for a free one, and the wait counts in its latency.
    pub connections: usize,
    /// Progress on stderr.
    pub progress: Progress,
    /// Open model over HTTP/1.1: a shared pool, or a task per connection.
    pub dispatch: Dispatch,
}

impl LoadPlan {
    /// Checks the plan's numbers, so a bad rate or duration is a clear error and not a panic.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |why: String| Err(LoadError::BadPlan(why));
        if self.endpoints.is_empty() {
            return bad("no endpoint to send requests to".to_owned());
        }
        let total_weight: u64 = self.endpoints.iter().map(|e| u64::from(e.weight)).sum();
        if total_weight == 0 {
            return bad("every endpoint has weight 0".to_owned());
        }
        // The arrival order holds one entry per unit of weight.
        if total_weight > 10_000 {
            return bad(format!(
                "the endpoints' weights add up to {total_weight}; at most 10000"
            ));
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(24 * 3600) {
            return bad(format!(
                "the duration must be more than 0 and at most 24h, not {:?}",
                self.duration
            ));
        }
        if self.connections == 0 || self.connections > 1_000_000 {
            return bad(format!(
                "connections must be 1 to 1000000, not {}",
                self.connections
            ));
        }
        if self.timeout.is_zero() {
            return bad("the request timeout must be more than 0".to_owned());
        }
        if self.dispatch == Dispatch::PerConnection
            && (self.http != HttpVersion::Http1 || !matches!(self.model, Model::Open { .. }))
        {
            return bad(
                "a task per connection is for the open model (--rate) over HTTP/1.1".to_owned(),
            );
        }
        match self.model {
            Model::Open {
                rate,
                max_outstanding,
            } => {
                if !rate.is_finite() || rate <= 0.0 || rate > 10_000_000.0 {
                    return bad(format!(
                        "the rate must be more than 0 and at most 10000000 requests/s, not {rate}"
                    ));
                }
                if max_outstanding == 0 || max_outstanding > 1_000_000 {
                    return bad(format!(
                        "requests in flight at most must be 1 to 1000000, not {max_outstanding}"
                    ));
                }
            }
            Model::Closed {
                users,
                think_min,
                think_max,
            } => {
                if users == 0 || users > 1_000_000 {
                    return bad(format!("users must be 1 to 1000000, not {users}"));
                }
                if think_min > think_max {
                    return bad("the shortest think time is longer than the longest".to_owned());
                }
            }
        }
        Ok(())
    }
}

/// What a run produced: the record, and how well the generator kept to its schedule.
#[derive(Debug)]
pub struct RunOutput {
    pub(crate) recorded: Recorded,
    /// From the start to the moment the last scheduled request was sent (open model), or the
    /// duration (closed model).
    pub(crate) dispatch_time: Duration,
    /// From the start to the last request's end.
    pub(crate) wall_time: Duration,
    /// Whether the run was stopped before its duration.
    pub(crate) stopped_early: bool,
}

/// A run about to start; its start instant is fixed, so scenario tasks running beside it (the
/// chaos, the metrics scrapes) can place their events on the same clock.
#[derive(Debug)]
pub struct Generator {
    plan: LoadPlan,
    client: LoadClient,
    recorder: Arc<Recorder>,
}

impl Generator {
    /// A run of `plan` starting now.
    pub fn new(plan: LoadPlan) -> Result<Self, LoadError> {
        plan.validate()?;
        let client = LoadClient::new(plan.http, plan.timeout, Some(plan.connections));
        let recorder = Recorder::new(
            Instant::now(),
            plan.endpoints.iter().map(|e| e.accept).collect(),
            plan.endpoints.iter().map(|e| e.judged).collect(),
        )
        .map_err(|e| LoadError::BadPlan(format!("histogram: {e}")))?;
        Ok(Self {
            plan,
            client,
            recorder: Arc::new(recorder),
        })
    }

    /// When the run starts (the schedule's zero).
    pub fn start(&self) -> Instant {
        self.recorder.start()
    }

    /// A handle that marks a moment of the run (see [`MarkHandle::mark_now`]).
    pub fn mark_handle(&self) -> MarkHandle {
        MarkHandle {
            recorder: Arc::clone(&self.recorder),
        }
    }

    /// The plan.
    pub fn plan(&self) -> &LoadPlan {
        &self.plan
    }

    /// Runs the plan to its end, or until `stop` resolves; then waits (at most the request
    /// timeout and a second) for the requests still in flight.
    pub async fn run(self, stop: impl Future<Output = ()>) -> RunOutput {
        let endpoints: Arc<[Endpoint]> = self.plan.endpoints.clone().into();
        let (done, finished) = tokio::sync::watch::channel(false);
        let progress = tokio::spawn(progress::report(
            self.plan.progress,
            Arc::clone(&self.recorder),
            self.plan.duration,
            finished,
        ));
        let (dispatch_time, stopped_early) = match self.plan.model {
            Model::Open { rate, .. } if self.plan.dispatch == Dispatch::PerConnection => {
                open::run_per_connection(
                    &endpoints,
                    &self.recorder,
                    open::PerConnection {
                        rate,
                        duration: self.plan.duration,
                        connections: self.plan.connections,
                        timeout: self.plan.timeout,
                    },
                    stop,
                )
                .await
            }
            Model::Open {
                rate,
                max_outstanding,
            } => {
                open::run(
                    &self.client,
                    &endpoints,
                    &self.recorder,
                    open::Schedule {
                        rate,
                        max_outstanding,
                        duration: self.plan.duration,
                        drain: self.plan.timeout + Duration::from_secs(1),
                    },
                    stop,
                )
                .await
            }
            Model::Closed {
                users,
                think_min,
                think_max,
            } => {
                closed::run(
                    &self.client,
                    &endpoints,
                    &self.recorder,
                    closed::Users {
                        users,
                        think_min,
                        think_max,
                        duration: self.plan.duration,
                        drain: self.plan.timeout + Duration::from_secs(1),
                    },
                    stop,
                )
                .await
            }
        };
        let wall_time = self.recorder.start().elapsed();
        done.send_replace(true);
        let _ = progress.await;
        RunOutput {
            recorded: self.recorder.take(),
            dispatch_time,
            wall_time,
            stopped_early,
        }
    }
}

/// Marks the moment a scenario changed something (slowed an upstream): from then on, the
/// first answer with each contract code is noted again (`first_code_after_mark_s`), so a
/// code the gateway already gave before the change does not hide its answer to the change.
#[derive(Debug, Clone)]
pub struct MarkHandle {
    recorder: Arc<Recorder>,
}

impl MarkHandle {
    /// Marks now.
    pub fn mark_now(&self) {
        self.recorder.mark();
    }
}

/// The endpoints' indexes in the order arrivals take them: each appears as often as its weight,
/// spread out (smooth weighted round robin), so two endpoints of weight 1 alternate.
pub(crate) fn arrival_order(endpoints: &[Endpoint]) -> Vec<usize> {
    let total: i64 = endpoints.iter().map(|e| i64::from(e.weight)).sum();
    let mut current = vec![0i64; endpoints.len()];
    let mut order = Vec::new();
    for _ in 0..total {
        for (index, endpoint) in endpoints.iter().enumerate() {
            current[index] += i64::from(endpoint.weight);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(index, value)| (**value, std::cmp::Reverse(*index)))
        else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(weight: u32) -> Endpoint {
        Endpoint {
            weight,
            ..Endpoint::get("http://127.0.0.1:1/").expect("url")
        }
    }

    #[test]
    fn arrivals_follow_the_weights_spread_out() {
        assert_eq!(arrival_order(&[endpoint(1), endpoint(1)]), [0, 1]);
        assert_eq!(arrival_order(&[endpoint(2), endpoint(1)]), [0, 1, 0]);
        assert_eq!(arrival_order(&[endpoint(0), endpoint(3)]), [1, 1, 1]);
    }

    #[test]
    fn bad_numbers_are_errors_not_panics() {
        let plan = |model| LoadPlan {
            endpoints: vec![endpoint(1)],
            model,
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            http: HttpVersion::Http1,
            connections: 100,
            progress: Progress::Off,
            dispatch: Dispatch::Shared,
        };
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let model = Model::Open {
                rate,
                max_outstanding: 10,
            };
            assert!(plan(model).validate().is_err(), "{rate}");
        }
        let closed = Model::Closed {
            users: 0,
            think_min: Duration::ZERO,
            think_max: Duration::ZERO,
        };
        assert!(plan(closed).validate().is_err());
        let good = Model::Open {
            rate: 10.0,
            max_outstanding: 10,
        };
        assert!(plan(good).validate().is_ok());
        let mut no_time = plan(good);
        no_time.duration = Duration::ZERO;
        assert!(no_time.validate().is_err());
    }
}
