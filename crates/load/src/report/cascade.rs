//! What the cascade scenario found, as its report carries it.

use serde::Serialize;

/// One phase's figures for one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseFigures {
    /// `normal`, `slow` or `recovered`.
    pub phase: String,
    pub endpoint: String,
    /// Answers with an accepted status per second.
    pub succeeded_per_s: f64,
    /// Requests due in the phase.
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Errors of the requests due in the phase, by kind.
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// What the cascade scenario found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CascadeFindings {
    /// The slowed route's endpoint.
    pub slow_endpoint: String,
    pub base_latency_ms: u64,
    pub chaos_latency_ms: u64,
    /// When the slowdown was applied and lifted, seconds from the start (null if it was not).
    pub chaos_started_s: Option<f64>,
    pub chaos_ended_s: Option<f64>,
    /// Seconds from the slowdown to the first sign of containment.
    pub time_to_contain_s: Option<f64>,
    /// What contained it: a contract code, or `circuit open (metrics)`.
    pub contained_by: Option<String>,
    /// When `/metrics` first showed a circuit open, and all closed again after that (half-open
    /// is not closed).
    pub circuit_opened_s: Option<f64>,
    pub circuit_closed_s: Option<f64>,
    /// Seconds from the end of the slowdown to the first second in which the slow route
    /// answered with success again (second precision).
    pub time_to_recover_s: Option<f64>,
    /// Each endpoint in each phase.
    pub phases: Vec<PhaseFigures>,
    /// Why the chaos or the metrics could not be driven or read mid-run, if so.
    pub problems: Vec<String>,
}

impl CascadeFindings {
    pub(crate) fn summary(&self) -> String {
        let seconds = |value: Option<f64>| match value {
            Some(value) => format!("{value:.2} s"),
            None => "never".to_owned(),
        };
        let mut out = format!(
            "  cascade: {} from {} ms to {} ms at {}, back at {}\n",
            self.slow_endpoint,
            self.base_latency_ms,
            self.chaos_latency_ms,
            seconds(self.chaos_started_s),
            seconds(self.chaos_ended_s),
        );
        out.push_str(&format!(
            "  time to contain {} ({}), circuit opened {}, closed {}, time to recover {}\n",
            seconds(self.time_to_contain_s),
            self.contained_by.as_deref().unwrap_or("-"),
            seconds(self.circuit_opened_s),
            seconds(self.circuit_closed_s),
            seconds(self.time_to_recover_s),
        ));
        for phase in &self.phases {
            out.push_str(&format!(
                "    {:<9} {:<24} {:>8.1} ok/s  p50 {:>8.1}  p99 {:>8.1} ms\n",
                phase.phase, phase.endpoint, phase.succeeded_per_s, phase.p50_ms, phase.p99_ms
            ));
        }
        for problem in &self.problems {
            out.push_str(&format!("  problem: {problem}\n"));
        }
        out
    }
}
