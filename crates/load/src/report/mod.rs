//! A run's report: the figures (`report.json`), the verdict against the criteria, a text summary
//! for the terminal, and the self-contained `report.html` with its plots (`html.rs`, `svg.rs`).

mod cascade;
mod html;
mod png_chart;
mod svg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::generator::recorder::{EndpointFigures, SecondFigures};
use crate::generator::{LoadPlan, Model, RunOutput};
use crate::LoadError;

pub use cascade::{CascadeFindings, PhaseFigures};

/// What a run must meet to pass. The defaults are the seeds': p95 < 500 ms, p99 < 1 s, fewer
/// than 0.1 % errors; a cache hit rate is judged only when asked for and known.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Criteria {
    /// p95 latency must be below this, in milliseconds.
    pub p95_ms: f64,
    /// p99 latency must be below this, in milliseconds.
    pub p99_ms: f64,
    /// The share of requests in error must be below this (0 to 1).
    pub max_error_rate: f64,
    /// The gateway's cache hit rate must be at least this, when set (0 to 1).
    pub min_cache_hit_rate: Option<f64>,
    /// An open-model run must send at least this share of the asked rate (0 to 1): a generator
    /// that could not keep up measured less load than it claims.
    pub min_rate_ratio: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Self {
            p95_ms: 500.0,
            p99_ms: 1000.0,
            max_error_rate: 0.001,
            min_cache_hit_rate: None,
            min_rate_ratio: 0.9,
        }
    }
}

/// One criterion, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `p95_ms < 500`.
    pub name: String,
    /// The run's figure.
    pub value: f64,
    /// Whether it met the criterion.
    pub pass: bool,
}

/// A moment of the run worth a mark on the plots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Marker {
    /// Seconds from the start.
    pub at_s: f64,
    /// What happened, e.g. `chaos: payments 100 ms → 5000 ms`.
    pub label: String,
}

/// One second of one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Seconds from the start (the bucket's start).
    pub t: u64,
    /// Requests due in this second.
    pub scheduled: u64,
    /// Requests completed in this second (answers per second).
    pub completed: u64,
    /// Requests completed in this second with an accepted status.
    pub succeeded: u64,
    /// Latency percentiles of the requests due in this second (null when none was timed).
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Errors of the requests due in this second, by kind.
    pub errors: BTreeMap<String, u64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }
}

/// One endpoint's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointReport {
    pub name: String,
    /// Whether it counts towards the criteria.
    pub judged: bool,
    pub requests: u64,
    pub sent: u64,
    pub answered: u64,
    /// Answered per second of the run.
    pub rps: f64,
    /// Share of requests with an accepted status.
    pub success_rate: f64,
    pub error_rate: f64,
    pub timeout_rate: f64,
    /// From the intended send time.
    pub latency: Latency,
    /// From the actual send.
    pub service: Latency,
    pub statuses: BTreeMap<String, u64>,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// When the first answer carrying each contract code came, seconds from the start.
    pub first_code_s: BTreeMap<String, f64>,
    /// The same, counting only answers after the scenario's change (the chaos), if any.
    pub first_code_after_mark_s: BTreeMap<String, f64>,
    /// One point per second.
    pub timeline: Vec<Point>,
}

/// The gateway's own figures, from its `/metrics` before and after the run.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct GatewayFigures {
    /// Cache lookups during the run, by result.
    pub cache_lookups: BTreeMap<String, f64>,
    /// Hits (hit, stale, stale_if_error, negative) over lookups (bypass excluded).
    pub cache_hit_rate: Option<f64>,
    /// The gateway process's CPU use during the run, in cores (1.0 = one core busy).
    pub cpu_cores: Option<f64>,
    /// Its resident memory after the run, in MiB.
    pub memory_mib: Option<f64>,
}

/// The login scenarios' own rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AuthFigures {
    /// Logins with the right password that succeeded (null when none was tried).
    pub login_success_rate: Option<f64>,
    /// Refreshes that succeeded (null when none was tried).
    pub refresh_success_rate: Option<f64>,
    /// Logins with a wrong password answered 401 as they should (null when none was tried).
    pub wrong_password_rejected_rate: Option<f64>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    /// `open` or `closed`.
    pub model: String,
    /// `http1` or `http2`.
    pub http: String,
    pub duration_s: f64,
    /// From the start to the last request's end (the duration and the drain).
    pub wall_s: f64,
    /// The open model's rate.
    pub asked_rps: Option<f64>,
    /// The closed model's users.
    pub users: Option<usize>,
    /// Requests due on the judged endpoints.
    pub requests: u64,
    /// Answers per second, all endpoints.
    pub rps: f64,
    /// Requests sent per second, all endpoints: how well the generator kept to its schedule.
    pub sent_rps: f64,
    pub error_rate: f64,
    pub timeout_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The judged endpoints' latency.
    pub latency: Latency,
    pub errors: u64,
    pub timeouts: u64,
    /// Requests not sent because too many were in flight.
    pub unsent: u64,
    pub cache_hit_rate: Option<f64>,
    pub statuses: BTreeMap<String, u64>,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub endpoints: Vec<EndpointReport>,
    pub markers: Vec<Marker>,
    pub gateway: Option<GatewayFigures>,
    /// What the cascade scenario found.
    pub cascade: Option<CascadeFindings>,
    /// The login scenarios' rates.
    pub auth: Option<AuthFigures>,
    pub criteria: Criteria,
    pub checks: Vec<Check>,
    pub pass: bool,
    /// The run was stopped (Ctrl-C) before its duration.
    pub stopped_early: bool,
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn timeline(timeline: &[Vec<SecondFigures>], endpoint: usize) -> Vec<Point> {
    let ms = |micros: u64| Some(micros as f64 / 1000.0);
    timeline
        .iter()
        .enumerate()
        .map(|(second, row)| match row.get(endpoint) {
            Some(figures) => {
                let timed = !figures.latency.is_empty();
                Point {
                    t: second as u64,
                    scheduled: figures.scheduled,
                    completed: figures.completed,
                    succeeded: figures.succeeded,
                    p50_ms: ms(figures.latency.value_at_quantile(0.5)).filter(|_| timed),
                    p95_ms: ms(figures.latency.value_at_quantile(0.95)).filter(|_| timed),
                    p99_ms: ms(figures.latency.value_at_quantile(0.99)).filter(|_| timed),
                    max_ms: ms(figures.latency.max()).filter(|_| timed),
                    errors: figures.errors_by_kind.clone(),
                }
            }
            None => Point {
                t: second as u64,
                scheduled: 0,
                completed: 0,
                succeeded: 0,
                p50_ms: None,
                p95_ms: None,
                p99_ms: None,
                max_ms: None,
                errors: BTreeMap::new(),
            },
        })
        .collect()
}

fn statuses(figures: &EndpointFigures) -> BTreeMap<String, u64> {
    figures
        .statuses
        .iter()
        .map(|(status, count)| (status.to_string(), *count))
        .collect()
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (key, count) in from {
        *into.entry(key.clone()).or_insert(0) += count;
    }
}

impl Report {
    /// The report of `output`, a run of `plan` for `scenario` against `target`, to be judged by
    /// `criteria` ([`Report::judge`]).
    pub fn build(
        scenario: &str,
        target: &str,
        plan: &LoadPlan,
        output: &RunOutput,
        criteria: Criteria,
    ) -> Self {
        // A stopped run is judged on the time it ran.
        let duration = if output.stopped_early {
            output.dispatch_time.max(Duration::from_millis(1))
        } else {
            plan.duration
        };
        let seconds = duration.as_secs_f64();
        let mut endpoints = Vec::new();
        let mut judged_latency: Option<Histogram<u64>> = None;
        let (mut requests, mut errors, mut timeouts, mut unsent) = (0, 0, 0, 0);
        let (mut sent_all, mut answered_all) = (0, 0);
        let mut all_statuses = BTreeMap::new();
        let mut all_errors = BTreeMap::new();
        for (index, (endpoint, figures)) in plan
            .endpoints
            .iter()
            .zip(&output.recorded.endpoints)
            .enumerate()
        {
            sent_all += figures.sent;
            answered_all += figures.answered;
            let report = EndpointReport {
                name: endpoint.name.clone(),
                judged: endpoint.judged,
                requests: figures.scheduled,
                sent: figures.sent,
                answered: figures.answered,
                rps: figures.answered as f64 / seconds,
                success_rate: share(
                    figures.scheduled.saturating_sub(figures.errors),
                    figures.scheduled,
                ),
                error_rate: share(figures.errors, figures.scheduled),
                timeout_rate: share(figures.timeouts, figures.scheduled),
                latency: Latency::of(&figures.latency),
                service: Latency::of(&figures.service),
                statuses: statuses(figures),
                errors_by_kind: figures.errors_by_kind.clone(),
                first_code_s: figures
                    .first_code
                    .iter()
                    .map(|(code, at)| (code.clone(), at.as_secs_f64()))
                    .collect(),
                first_code_after_mark_s: figures
                    .first_code_after_mark
                    .iter()
                    .map(|(code, at)| (code.clone(), at.as_secs_f64()))
                    .collect(),
                timeline: timeline(&output.recorded.timeline, index),
            };
            if endpoint.judged {
                requests += figures.scheduled;
                errors += figures.errors;
                timeouts += figures.timeouts;
                unsent += figures.unsent;
                add_counts(&mut all_statuses, &report.statuses);
                add_counts(&mut all_errors, &report.errors_by_kind);
                match &mut judged_latency {
                    Some(total) => {
                        let _ = total.add(&figures.latency);
                    }
                    None => judged_latency = Some(figures.latency.clone()),
                }
            }
            endpoints.push(report);
        }
        let latency = judged_latency.as_ref().map(Latency::of).unwrap_or_default();
        let (model, asked_rps, users, sent_seconds) = match plan.model {
            Model::Open { rate, .. } => (
                "open",
                Some(rate),
                None,
                seconds.max(output.dispatch_time.as_secs_f64()),
            ),
            Model::Closed { users, .. } => ("closed", None, Some(users), seconds),
        };
        Self {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            model: model.to_owned(),
            http: match plan.http {
                crate::HttpVersion::Http1 => "http1".to_owned(),
                crate::HttpVersion::Http2 => "http2".to_owned(),
            },
            duration_s: seconds,
            wall_s: output.wall_time.as_secs_f64(),
            asked_rps,
            users,
            requests,
            rps: answered_all as f64 / seconds,
            sent_rps: sent_all as f64 / sent_seconds,
            error_rate: share(errors, requests),
            timeout_rate: share(timeouts, requests),
            p50_ms: latency.p50_ms,
            p95_ms: latency.p95_ms,
            p99_ms: latency.p99_ms,
            max_ms: latency.max_ms,
            latency,
            errors,
            timeouts,
            unsent,
            cache_hit_rate: None,
            statuses: all_statuses,
            errors_by_kind: all_errors,
            endpoints,
            markers: Vec::new(),
            gateway: None,
            cascade: None,
            auth: None,
            criteria,
            checks: Vec::new(),
            pass: false,
            stopped_early: output.stopped_early,
        }
    }

    /// Checks the criteria (and `extra` checks of the scenario) and sets the verdict.
    /// Scenario findings, markers and gateway figures are added before.
    pub fn judge(&mut self, extra: Vec<Check>) {
        let criteria = self.criteria;
        let mut checks = vec![
            Check {
                name: format!("p95_ms < {}", criteria.p95_ms),
                value: self.p95_ms,
                pass: self.p95_ms < criteria.p95_ms,
            },
            Check {
                name: format!("p99_ms < {}", criteria.p99_ms),
                value: self.p99_ms,
                pass: self.p99_ms < criteria.p99_ms,
            },
            Check {
                name: format!("error_rate < {}", criteria.max_error_rate),
                value: self.error_rate,
                pass: self.error_rate < criteria.max_error_rate,
            },
        ];
        if self.requests == 0 {
            checks.push(Check {
                name: "requests > 0".to_owned(),
                value: 0.0,
                pass: false,
            });
        }
        if let Some(asked) = self.asked_rps {
            let ratio = self.sent_rps / asked;
            checks.push(Check {
                name: format!("sent_rps / asked_rps >= {}", criteria.min_rate_ratio),
                value: ratio,
                pass: ratio >= criteria.min_rate_ratio,
            });
        }
        if let Some(minimum) = criteria.min_cache_hit_rate {
            let value = self.cache_hit_rate.unwrap_or(0.0);
            checks.push(Check {
                name: format!("cache_hit_rate >= {minimum}"),
                value,
                pass: self.cache_hit_rate.is_some() && value >= minimum,
            });
        }
        checks.extend(extra);
        self.pass = checks.iter().all(|check| check.pass);
        self.checks = checks;
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let load = match (self.asked_rps, self.users) {
            (Some(rate), _) => format!("open model, {rate} req/s asked"),
            (None, Some(users)) => format!("closed model, {users} users"),
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "sekisho load: {} against {} ({load}, {:.0} s, {})\n",
            self.scenario, self.target, self.duration_s, self.http
        ));
        out.push_str(&format!(
            "  requests {}  sent {:.1}/s  answered {:.1}/s\n",
            self.requests, self.sent_rps, self.rps
        ));
        out.push_str(&format!(
            "  latency ms  p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}\n",
            self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms
        ));
        out.push_str(&format!(
            "  errors {} ({:.3} %)  timeouts {} ({:.3} %)  unsent {}\n",
            self.errors,
            self.error_rate * 100.0,
            self.timeouts,
            self.timeout_rate * 100.0,
            self.unsent
        ));
        out.push_str(&format!("  statuses {}\n", counts(&self.statuses)));
        if !self.errors_by_kind.is_empty() {
            out.push_str(&format!(
                "  errors by kind {}\n",
                counts(&self.errors_by_kind)
            ));
        }
        if self.endpoints.len() > 1 {
            for endpoint in &self.endpoints {
                out.push_str(&format!(
                    "  {}{}: {:.1}/s  p50 {:.1}  p99 {:.1} ms  success {:.1} %  {}\n",
                    endpoint.name,
                    if endpoint.judged { "" } else { " (not judged)" },
                    endpoint.rps,
                    endpoint.latency.p50_ms,
                    endpoint.latency.p99_ms,
                    endpoint.success_rate * 100.0,
                    counts(&endpoint.statuses)
                ));
            }
        }
        if let Some(rate) = self.cache_hit_rate {
            out.push_str(&format!("  cache hit rate {:.1} %\n", rate * 100.0));
        }
        if let Some(gateway) = &self.gateway {
            if let (Some(cpu), Some(memory)) = (gateway.cpu_cores, gateway.memory_mib) {
                out.push_str(&format!(
                    "  gateway CPU {:.0} % of a core, memory {memory:.0} MiB\n",
                    cpu * 100.0
                ));
            }
        }
        if let Some(cascade) = &self.cascade {
            out.push_str(&cascade.summary());
        }
        if let Some(auth) = &self.auth {
            let rate = |value: Option<f64>| {
                value.map_or("-".to_owned(), |v| format!("{:.2} %", v * 100.0))
            };
            out.push_str(&format!(
                "  login success {}  refresh success {}  wrong passwords rejected {}\n",
                rate(auth.login_success_rate),
                rate(auth.refresh_success_rate),
                rate(auth.wrong_password_rejected_rate)
            ));
        }
        for check in &self.checks {
            out.push_str(&format!(
                "  {} {}: {}\n",
                if check.pass { "pass" } else { "FAIL" },
                check.name,
                round(check.value)
            ));
        }
        out.push_str(if self.pass { "PASS\n" } else { "FAIL\n" });
        out
    }

    /// Writes `report.json`, `report.html` and each chart as a standalone SVG and as a PNG
    /// (for a README) into `dir` (created if needed); their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
        let io = |path: &Path, error: std::io::Error| LoadError::Report {
            path: path.to_owned(),
            error,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let json_path = dir.join("report.json");
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| io(&json_path, std::io::Error::other(e)))?;
        std::fs::write(&json_path, json).map_err(|e| io(&json_path, e))?;
        let html_path = dir.join("report.html");
        std::fs::write(&html_path, html::render(self)).map_err(|e| io(&html_path, e))?;
        let mut paths = vec![json_path, html_path];
        for (stem, chart) in html::charts(self) {
            let path = dir.join(format!("{stem}.svg"));
            std::fs::write(&path, svg::line_chart(&chart)).map_err(|e| io(&path, e))?;
            paths.push(path);
            let path = dir.join(format!("{stem}.png"));
            let picture = png_chart::line_chart(&chart).map_err(|e| io(&path, e))?;
            std::fs::write(&path, picture).map_err(|e| io(&path, e))?;
            paths.push(path);
        }
        Ok(paths)
    }
}

fn round(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value}")
    } else {
        format!("{value:.4}")
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(key, count)| format!("{key}×{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
