//! Outlier detection: consecutive failures and failure rates that stand out from the peers'
//! eject a target for a growing time; each call's outcome feeds it and the balancers' figures.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sekisho_config::FailureKind;
use tokio::time::Instant;

use super::UpstreamGroup;
use crate::clock::Millis;

/// Outlier detection settings, resolved.
#[derive(Debug, Clone)]
pub(super) struct OutlierSettings {
    pub(super) consecutive_failures: u32,
    pub(super) base_ejection: Duration,
    pub(super) max_ejection: Duration,
    pub(super) max_ejection_percent: f64,
    pub(super) interval: Duration,
    pub(super) failure_rate_margin: f64,
    pub(super) minimum_requests: u64,
    pub(super) failure_on: Vec<FailureKind>,
}

/// How a call to a target ended, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// An answer with this status.
    Status(u16),
    /// No connection could be made.
    ConnectError,
    /// No answer before the deadline.
    Timeout,
    /// The connection failed after it was made (reset, closed mid-answer).
    Broken,
}

impl CallOutcome {
    fn matches(self, kind: &FailureKind) -> bool {
        match (self, kind) {
            (CallOutcome::ConnectError, FailureKind::ConnectError) => true,
            (CallOutcome::Timeout, FailureKind::Timeout) => true,
            (CallOutcome::Status(status), FailureKind::Status(failing)) => status == *failing,
            _ => false,
        }
    }

    /// Whether it counts as a failure for the latency and error-rate figures (without outlier
    /// settings): no answer, or a 5xx that says the target is in trouble.
    fn is_failure_by_default(self) -> bool {
        match self {
            CallOutcome::Status(status) => matches!(status, 500 | 502 | 503 | 504),
            _ => true,
        }
    }
}

impl UpstreamGroup {
    /// Records how a call to `target` ended (at the response head, or in failure), for the
    /// balancers' figures and outlier detection.
    pub(crate) fn record(
        &self,
        target: usize,
        outcome: CallOutcome,
        latency: Duration,
        now: Instant,
    ) {
        let Some(chosen) = self.targets.get(target) else {
            return;
        };
        let state = &chosen.state;
        let failed = match &self.outlier {
            Some(outlier) => {
                outlier.failure_on.iter().any(|kind| outcome.matches(kind))
                    || outcome == CallOutcome::Broken
            }
            None => outcome.is_failure_by_default(),
        };
        state.load.observe(latency, failed, now.into_std());
        let Some(outlier) = &self.outlier else {
            return;
        };
        let millis = self.clock.millis(now);
        state.window_requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            state.window_failures.fetch_add(1, Ordering::Relaxed);
            let in_a_row = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if in_a_row >= outlier.consecutive_failures && !state.is_ejected(millis) {
                self.eject(target, outlier, millis, "consecutive failures");
            }
        } else {
            state.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let window_end = self.state.window_end.load(Ordering::Relaxed);
        if window_end == 0 {
            let _ = self.state.window_end.compare_exchange(
                0,
                millis + outlier.interval.as_millis() as u64,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else if millis >= window_end
            && self
                .state
                .window_end
                .compare_exchange(
                    window_end,
                    millis + outlier.interval.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.close_window(outlier, millis);
        }
    }

    /// The end of an outlier window: eject targets whose failure rate stands out from their
    /// peers', and let the ejection level of well-behaved targets decay.
    fn close_window(&self, outlier: &OutlierSettings, now: Millis) {
        let figures: Vec<(u64, u64)> = self
            .targets
            .iter()
            .map(|t| {
                (
                    t.state.window_requests.swap(0, Ordering::Relaxed),
                    t.state.window_failures.swap(0, Ordering::Relaxed),
                )
            })
            .collect();
        for (target, &(_, failures)) in self.targets.iter().zip(&figures) {
            if failures == 0 && !target.state.is_ejected(now) {
                let _ = target.state.ejection_level.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |level| level.checked_sub(1),
                );
            }
        }
        if outlier.failure_rate_margin >= 1.0 {
            return;
        }
        let judged: Vec<(usize, f64)> = figures
            .iter()
            .enumerate()
            .filter(|(_, (requests, _))| *requests >= outlier.minimum_requests)
            .map(|(i, (requests, failures))| (i, *failures as f64 / *requests as f64))
            .collect();
        if judged.len() < 2 {
            return;
        }
        let total: f64 = judged.iter().map(|(_, rate)| rate).sum();
        for &(target, rate) in &judged {
            let peers_mean = (total - rate) / (judged.len() - 1) as f64;
            if rate - peers_mean > outlier.failure_rate_margin
                && !self.targets[target].state.is_ejected(now)
            {
                self.eject(
                    target,
                    outlier,
                    now,
                    "failure rate stands out from its peers",
                );
            }
        }
    }

    fn eject(&self, target: usize, outlier: &OutlierSettings, now: Millis, reason: &str) {
        let ejected = self
            .targets
            .iter()
            .filter(|t| t.state.is_ejected(now))
            .count();
        let allowed = (ejected + 1) as f64 * 100.0
            <= outlier.max_ejection_percent * self.targets.len() as f64;
        let chosen = &self.targets[target];
        if !allowed {
            tracing::debug!(upstream = %self.name, target = %chosen.address, reason, "not ejected: max_ejection_percent reached");
            return;
        }
        let level = chosen.state.ejection_level.fetch_add(1, Ordering::Relaxed) + 1;
        let length = outlier
            .base_ejection
            .saturating_mul(level)
            .min(outlier.max_ejection);
        let until = now + length.as_millis() as u64;
        chosen.state.ejected_until.store(until, Ordering::Relaxed);
        chosen.state.ejections_total.fetch_add(1, Ordering::Relaxed);
        chosen
            .state
            .consecutive_failures
            .store(0, Ordering::Relaxed);
        self.state.changed();
        tracing::warn!(
            upstream = %self.name,
            target = %chosen.address,
            reason,
            ejection_ms = length.as_millis() as u64,
            times = level,
            "target ejected"
        );
    }
}
