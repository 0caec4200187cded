//! Alert rules over signals: thresholds per severity, `for`, compound conditions — and the
//! seeds' default rules.
//!
//! A **signal** is a named figure per target, taken every evaluation: `("cpu", "gateway") →
//! 0.91`, `("upstream_error_rate", "orders") → 0.3`, `("circuit_open", "payments") → 1`
//! ([`Signals`]). A **threshold rule** watches one signal, for one target or for every target
//! that has it (one alert per target); the highest severity whose threshold is crossed is the
//! alert's severity (`above`: value ≥ threshold; `below`, for figures where less is worse such as
//! days to a certificate's expiry: value ≤ threshold). A severity must hold for `for` before the
//! alert fires at it (a rise while firing needs its own `for` too; a fall is at once), and a
//! value under every threshold clears the alert. A **compound rule** fires at its own severity
//! while all (`all_of`) or any (`any_of`) of the named threshold rules fire, on any target.
//!
//! [`Evaluator::evaluate`] returns every alert's state for [`crate::AlertManager::observe`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::manager::{Labels, Severity};

/// Figures by (signal, target), as one evaluation found them.
pub type Signals = HashMap<(String, String), f64>;

/// Which way a threshold is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// value ≥ threshold.
    Above,
    /// value ≤ threshold.
    Below,
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// One signal against thresholds.
    Threshold {
        /// The signal's name.
        signal: String,
        /// One target, or every target that has the signal.
        target: Option<String>,
        /// Which way counts as worse.
        direction: Direction,
        /// Threshold per severity (any subset).
        thresholds: BTreeMap<Severity, f64>,
    },
    /// Fires at `severity` while every named rule fires.
    AllOf(Vec<String>, Severity),
    /// Fires at `severity` while any named rule fires.
    AnyOf(Vec<String>, Severity),
}

/// An alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name: the alert's `alertname`.
    pub name: String,
    /// What it watches.
    pub condition: Condition,
    /// How long a severity must hold before the alert fires at it.
    pub for_: Duration,
    /// Extra labels of its alerts.
    pub labels: Labels,
    /// Summary, runbook URL and the like.
    pub annotations: Labels,
}

impl Rule {
    fn threshold(
        name: &str,
        signal: &str,
        direction: Direction,
        thresholds: &[(Severity, f64)],
        for_: Duration,
        summary: &str,
    ) -> Self {
        Self {
            name: name.to_owned(),
            condition: Condition::Threshold {
                signal: signal.to_owned(),
                target: None,
                direction,
                thresholds: thresholds.iter().copied().collect(),
            },
            for_,
            labels: Labels::new(),
            annotations: [("summary".to_owned(), summary.to_owned())].into(),
        }
    }
}

/// The seeds' rules, shipped on by default (a config may turn each off by name).
pub fn default_rules() -> Vec<Rule> {
    use Direction::{Above, Below};
    use Severity::{Critical, Warning};
    let minute = Duration::from_secs(60);
    vec![
        Rule::threshold(
            "HighCpu",
            "cpu",
            Above,
            &[(Warning, 0.7), (Critical, 0.85)],
            minute,
            "CPU use is high",
        ),
        Rule::threshold(
            "HighMemory",
            "memory",
            Above,
            &[(Warning, 0.8), (Critical, 0.9)],
            minute,
            "memory use is high",
        ),
        Rule::threshold(
            "SlowResponses",
            "upstream_latency_p95",
            Above,
            &[(Warning, 5.0)],
            minute,
            "responses take 5 s or more (p95)",
        ),
        Rule::threshold(
            "ServerErrors",
            "route_error_rate",
            Above,
            &[(Critical, 0.1)],
            minute,
            "more than 10 % of answers are 5xx",
        ),
        Rule::threshold(
            "NoHealthyTarget",
            "no_healthy_targets",
            Above,
            &[(Critical, 1.0)],
            Duration::ZERO,
            "an upstream has no healthy target",
        ),
        Rule::threshold(
            "CircuitOpen",
            "circuit_open",
            Above,
            &[(Warning, 1.0)],
            Duration::ZERO,
            "a circuit is open",
        ),
        Rule::threshold(
            "BackupTooOld",
            "backup_age",
            Above,
            &[(Warning, 86_400.0)],
            Duration::ZERO,
            "the last successful backup is older than a day",
        ),
        Rule::threshold(
            "TlsExpiring",
            "tls_expiry_days",
            Below,
            &[(Warning, 30.0), (Critical, 7.0)],
            Duration::ZERO,
            "a listener's certificate expires soon",
        ),
        Rule::threshold(
            "FailedLoginBurst",
            "login_failures_per_minute",
            Above,
            &[(Warning, 30.0), (Critical, 100.0)],
            Duration::ZERO,
            "many failed logins",
        ),
        // Monitoring the monitor: a notification pending this long means a receiver (or the
        // outbox's worker) is stuck; it reaches the receivers that still work.
        Rule::threshold(
            "NotificationsStuck",
            "notification_oldest_pending_seconds",
            Above,
            &[(Warning, 300.0), (Critical, 1800.0)],
            Duration::ZERO,
            "a notification has been waiting for delivery for minutes",
        ),
    ]
}

/// One alert's state as an evaluation found it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertState {
    /// The alert's labels (`alertname`, `target`, the rule's labels).
    pub labels: Labels,
    /// The rule's annotations, with `value`.
    pub annotations: Labels,
    /// Firing at this severity, or clear.
    pub severity: Option<Severity>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The severity the value has crossed, and since when.
    crossed: Severity,
    since: Instant,
    /// The severity it fires at (after `for`).
    firing: Option<Severity>,
}

/// Evaluates rules over signals, keeping each alert's `for` timing.
#[derive(Debug, Default)]
pub struct Evaluator {
    rules: Vec<Rule>,
    pending: HashMap<(String, String), Pending>,
}

impl Evaluator {
    /// An evaluator of `rules`.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            pending: HashMap::new(),
        }
    }

    /// The alerts to tell the manager at `now`: those firing, and those that fired until now and
    /// have cleared (once each); nothing for an alert still within its `for`.
    pub fn evaluate(&mut self, signals: &Signals, now: Instant) -> Vec<AlertState> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut firing_rules: HashSet<String> = HashSet::new();
        // The signals by name, once: each rule then looks only at its own signal's targets
        // instead of every signal (the cost of a cycle was rules × signals comparisons).
        let mut by_name: HashMap<&str, Vec<(&String, f64)>> = HashMap::new();
        for ((name, who), value) in signals {
            by_name
                .entry(name.as_str())
                .or_default()
                .push((who, *value));
        }
        for rule in &self.rules {
            let Condition::Threshold {
                signal,
                target,
                direction,
                thresholds,
            } = &rule.condition
            else {
                continue;
            };
            let Some(targets) = by_name.get(signal.as_str()) else {
                continue;
            };
            for &(who, value) in targets {
                if target.as_ref().is_some_and(|t| t != who) {
                    continue;
                }
                let crossed = thresholds
                    .iter()
                    .filter(|(_, limit)| match direction {
                        Direction::Above => value >= **limit,
                        Direction::Below => value <= **limit,
                    })
                    .map(|(severity, _)| *severity)
                    .max();
                let key = (rule.name.clone(), who.clone());
                seen.insert(key.clone());
                let stepped = step(&mut self.pending, key, crossed, rule.for_, now);
                if let Step::Firing(_) = stepped {
                    firing_rules.insert(rule.name.clone());
                }
                out.extend(state(rule, who, Some(value), stepped));
            }
        }
        for rule in &self.rules {
            let (names, own, all) = match &rule.condition {
                Condition::AllOf(names, severity) => (names, *severity, true),
                Condition::AnyOf(names, severity) => (names, *severity, false),
                Condition::Threshold { .. } => continue,
            };
            let holds = if all {
                names.iter().all(|n| firing_rules.contains(n))
            } else {
                names.iter().any(|n| firing_rules.contains(n))
            };
            let key = (rule.name.clone(), "gateway".to_owned());
            seen.insert(key.clone());
            let stepped = step(&mut self.pending, key, holds.then_some(own), rule.for_, now);
            out.extend(state(rule, "gateway", None, stepped));
        }
        // A target that vanished from the signals: its alert clears.
        let gone: Vec<_> = self
            .pending
            .keys()
            .filter(|key| !seen.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            if let (Some(pending), Some(rule)) = (
                self.pending.remove(&key),
                self.rules.iter().find(|r| r.name == key.0),
            ) {
                if pending.firing.is_some() {
                    out.extend(state(rule, &key.1, None, Step::Cleared));
                }
            }
        }
        out
    }
}

/// What one evaluation did to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Fires at this severity.
    Firing(Severity),
    /// Fired until now, and cleared.
    Cleared,
    /// Neither fires nor fired (below every threshold, or still within `for`).
    Quiet,
}

/// Advances one alert's `for` timing.
fn step(
    pending: &mut HashMap<(String, String), Pending>,
    key: (String, String),
    crossed: Option<Severity>,
    for_: Duration,
    now: Instant,
) -> Step {
    let Some(crossed) = crossed else {
        return match pending.remove(&key).and_then(|p| p.firing) {
            Some(_) => Step::Cleared,
            None => Step::Quiet,
        };
    };
    let entry = pending.entry(key).or_insert(Pending {
        crossed,
        since: now,
        firing: None,
    });
    if crossed != entry.crossed {
        entry.crossed = crossed;
        entry.since = now;
    }
    match entry.firing {
        // A fall is taken at once; a rise waits its own `for`.
        Some(firing) if crossed < firing => entry.firing = Some(crossed),
        _ if now >= entry.since + for_ => entry.firing = Some(crossed),
        _ => {}
    }
    entry.firing.map_or(Step::Quiet, Step::Firing)
}

/// The alert's state to tell the manager, if there is anything to tell.
fn state(rule: &Rule, target: &str, value: Option<f64>, stepped: Step) -> Option<AlertState> {
    let severity = match stepped {
        Step::Firing(severity) => Some(severity),
        Step::Cleared => None,
        Step::Quiet => return None,
    };
    let mut labels = rule.labels.clone();
    labels.insert("alertname".to_owned(), rule.name.clone());
    labels.insert("target".to_owned(), target.to_owned());
    let mut annotations = rule.annotations.clone();
    if let Some(value) = value {
        annotations.insert("value".to_owned(), format!("{value}"));
    }
    Some(AlertState {
        labels,
        annotations,
        severity,
    })
}

#[cfg(test)]
mod tests;
