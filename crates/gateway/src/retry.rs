//! A route's retry policy as the proxy applies it (`[routes.retry]`).
//!
//! The decision whether a failed attempt is tried again lives here; the loop that makes the attempts is
//! in `proxy::attempt`. A retry needs all of: a failure named in `retry_on`; a request that may be
//! sent again (an idempotent method unless `retry_non_idempotent`, or a failed connect, which
//! sent nothing); a body that can be sent again (none, or buffered); attempts left; a backoff that
//! ends before the route's deadline; and a retry from the route's budget, withdrawn when the
//! retry is decided — so backed-off retries count as soon as they are planned.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use sekisho_config::FailureKind;
use sekisho_policy::backoff::{Backoff, Jitter};
use sekisho_policy::budget::RetryBudget;

use crate::status_set::StatusSet;

/// How one attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptFailure {
    /// No connection to the target: nothing was sent.
    ConnectError,
    /// The per-attempt timeout (`per_try_timeout`) passed before the answer's head.
    Timeout,
    /// The target answered this status; a broken answer (reset, malformed) counts as 502.
    Status(u16),
}

impl AttemptFailure {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::Status(_) => "status",
        }
    }
}

/// Why a retry was not made, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRetry {
    /// The failure is not one `retry_on` names, or the method may not be sent twice, or the
    /// body was streamed.
    NotRetryable,
    /// Every attempt was used.
    Attempts,
    /// The backoff would end after the route's deadline.
    Deadline,
    /// The retry budget is spent.
    Budget,
}

/// Counters of one route's retries.
#[derive(Debug, Clone, Default)]
pub(crate) struct RetryMetrics {
    /// Retries made, by what failed: connect error, timeout, status.
    pub retries: [Counter; 3],
    /// Retries refused because the budget was spent.
    pub budget_exhausted: Counter,
}

/// A route's compiled `[routes.retry]`.
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    backoff: Backoff,
    on_connect_error: bool,
    on_timeout: bool,
    statuses: StatusSet,
    non_idempotent: bool,
    /// Deadline of one try's answer head.
    pub per_try_timeout: Option<Duration>,
    /// Request bodies up to this size (by `Content-Length`) are buffered so they can be resent.
    pub max_buffered_body: u64,
    budget: Arc<RetryBudget>,
    metrics: RetryMetrics,
}

impl RetryPolicy {
    /// Compiles `config`; `budget` is the route's (kept across reloads by the caller).
    pub(crate) fn new(
        config: &sekisho_config::Retry,
        budget: Arc<RetryBudget>,
        metrics: RetryMetrics,
    ) -> Self {
        let jitter = match config.jitter {
            sekisho_config::Jitter::Full => Jitter::Full,
            sekisho_config::Jitter::Equal => Jitter::Equal,
            sekisho_config::Jitter::Decorrelated => Jitter::Decorrelated,
            sekisho_config::Jitter::None => Jitter::None,
        };
        Self {
            attempts: config.attempts.0,
            backoff: Backoff::new(config.backoff.0, config.max_backoff.0, jitter),
            on_connect_error: config.retry_on.contains(&FailureKind::ConnectError),
            on_timeout: config.retry_on.contains(&FailureKind::Timeout),
            statuses: config
                .retry_on
                .iter()
                .filter_map(|kind| match kind {
                    FailureKind::Status(status) => Some(*status),
                    _ => None,
                })
                .collect(),
            non_idempotent: config.retry_non_idempotent,
            per_try_timeout: config.per_try_timeout.map(|d| d.get()),
            max_buffered_body: config.max_buffered_body_bytes.0,
            budget,
            metrics,
        }
    }

    /// Whether `method` may be sent more than once (RFC 9110 §9.2.2's idempotent methods, or
    /// any with `retry_non_idempotent`).
    pub(crate) fn allows_method(&self, method: &Method) -> bool {
        self.non_idempotent || is_idempotent(method)
    }

    /// Whether a status is one to retry.
    pub(crate) fn retries_status(&self, status: u16) -> bool {
        self.statuses.contains(status)
    }

    /// Counts a request (its first try) in the budget.
    pub(crate) fn deposit(&self, now: Instant) {
        self.budget.deposit(now.into_std());
    }

    /// What the budget holds at `now`: requests and retries of its window, retries left.
    pub(crate) fn budget_figures(&self, now: Instant) -> sekisho_policy::budget::BudgetFigures {
        self.budget.figures(now.into_std())
    }

    /// Decides whether the attempt that just failed is tried again and after which wait.
    pub(crate) fn decide(&self, failed: &FailedAttempt) -> Result<Duration, NoRetry> {
        let wanted = match failed.failure {
            AttemptFailure::ConnectError => self.on_connect_error,
            AttemptFailure::Timeout => self.on_timeout && failed.resendable,
            AttemptFailure::Status(status) => self.retries_status(status) && failed.resendable,
        };
        if !wanted {
            return Err(NoRetry::NotRetryable);
        }
        if failed.attempts >= self.attempts {
            return Err(NoRetry::Attempts);
        }
        // A failed connect moves on to another target at once: that target is not the one that
        // refused. Anything else backs off.
        let delay = if failed.failure == AttemptFailure::ConnectError && failed.other_target {
            Duration::ZERO
        } else {
            self.backoff
                .delay(failed.attempts, failed.previous_delay, fastrand::f64())
        };
        if failed.now + delay >= failed.deadline {
            return Err(NoRetry::Deadline);
        }
        if !self.budget.withdraw(failed.now.into_std()) {
            self.metrics.budget_exhausted.inc();
            return Err(NoRetry::Budget);
        }
        let index = match failed.failure {
            AttemptFailure::ConnectError => 0,
            AttemptFailure::Timeout => 1,
            AttemptFailure::Status(_) => 2,
        };
        self.metrics.retries[index].inc();
        Ok(delay)
    }
}

/// An attempt that failed, as [`RetryPolicy::decide`] weighs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailedAttempt {
    /// What failed.
    pub failure: AttemptFailure,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// Whether the request (method and body) may be sent again.
    pub resendable: bool,
    /// Whether a target not tried yet is eligible.
    pub other_target: bool,
    /// The wait before the previous retry (`ZERO` for none).
    pub previous_delay: Duration,
    /// When it failed.
    pub now: Instant,
    /// The route's deadline.
    pub deadline: Instant,
}

/// RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT and DELETE.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
