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
//! A threshold rule may also watch a **metric**: every series of the gateway's exposition with a
//! given name and labels ([`Source::Metric`], `series.rs`), one alert per series, its target the
//! series' labels. What is compared is the latest reading, or — with a window — the readings'
//! mean (`avg`) or a counter's per-second increase (`rate`) over it ([`Function`]); a signal
//! may take a window too (the contract's `upstream_error_rate` over `window = "30s"`).
//!
//! [`Evaluator::evaluate`] returns every alert's state for [`crate::AlertManager::observe`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::manager::{Labels, Severity};
use crate::series::{series_target, Function, Readings, Sample, Selector};

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

/// Where a [`Condition::Series`] reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A signal, for one target or every target that has it.
    Signal {
        /// The signal's name.
        signal: String,
        /// One target, or every target.
        target: Option<String>,
    },
    /// Every series of the gateway's exposition the selector matches (one alert each).
    Metric(Selector),
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A signal's or a metric's readings, through a function (the latest, the mean or the
    /// rate over a window), against thresholds.
    Series {
        /// What is read.
        source: Source,
        /// What is compared.
        function: Function,
        /// Which way counts as worse.
        direction: Direction,
        /// Threshold per severity (any subset).
        thresholds: BTreeMap<Severity, f64>,
    },
    /// One signal's latest value against thresholds (a [`Condition::Series`] of a signal with
    /// [`Function::Value`]).
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
    /// Evaluations left in which its target may be missing without clearing it: an alert put
    /// back after a restart, whose signal may need a reading or two before it reappears (a
    /// CPU share is a difference of two readings); 0 once seen.
    grace: u32,
}

/// How many evaluations an alert put back after a restart waits for its target to reappear.
const RESTORED_GRACE: u32 = 3;

/// Evaluates rules over signals and metrics, keeping each alert's `for` timing and each
/// windowed rule's readings.
#[derive(Debug, Default)]
pub struct Evaluator {
    rules: Vec<Rule>,
    pending: HashMap<(String, String), Pending>,
    /// Readings by (rule, target), for the rules with a window.
    readings: HashMap<(String, String), Readings>,
    /// Alerts of rules a reload removed, reported clear by the next evaluation.
    retired: Vec<AlertState>,
}

/// A threshold rule's parts, whichever its condition's shape (borrowed: evaluated every
/// cycle, for every rule).
struct Watch<'a> {
    source: SourceRef<'a>,
    function: Function,
    direction: Direction,
    thresholds: &'a BTreeMap<Severity, f64>,
}

/// A [`Source`], borrowed.
enum SourceRef<'a> {
    Signal {
        signal: &'a str,
        target: Option<&'a str>,
    },
    Metric(&'a Selector),
}

impl Condition {
    fn watch(&self) -> Option<Watch<'_>> {
        match self {
            Self::Series {
                source,
                function,
                direction,
                thresholds,
            } => Some(Watch {
                source: match source {
                    Source::Signal { signal, target } => SourceRef::Signal {
                        signal,
                        target: target.as_deref(),
                    },
                    Source::Metric(selector) => SourceRef::Metric(selector),
                },
                function: *function,
                direction: *direction,
                thresholds,
            }),
            Self::Threshold {
                signal,
                target,
                direction,
                thresholds,
            } => Some(Watch {
                source: SourceRef::Signal {
                    signal,
                    target: target.as_deref(),
                },
                function: Function::Value,
                direction: *direction,
                thresholds,
            }),
            Self::AllOf(..) | Self::AnyOf(..) => None,
        }
    }
}

impl Evaluator {
    /// An evaluator of `rules`.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            pending: HashMap::new(),
            readings: HashMap::new(),
            retired: Vec::new(),
        }
    }

    /// Replaces the rules (a reloaded config). What a rule kept of the past — an alert's pending
    /// `for`, a firing severity, a window's readings — stays with the rule of the same name; a
    /// rule removed drops its own, so its alerts resolve at the next evaluation.
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        let names: HashSet<&str> = rules.iter().map(|rule| rule.name.as_str()).collect();
        // The alerts of a removed rule that were firing clear at the next evaluation.
        for ((name, target), pending) in &self.pending {
            if names.contains(name.as_str()) || pending.firing.is_none() {
                continue;
            }
            if let Some(rule) = self.rules.iter().find(|rule| &rule.name == name) {
                self.retired
                    .extend(state(rule, target, None, Step::Cleared));
            }
        }
        self.pending
            .retain(|(name, _), _| names.contains(name.as_str()));
        self.readings
            .retain(|(name, _), _| names.contains(name.as_str()));
        self.rules = rules;
    }

    /// The rules' names, in evaluation order.
    pub fn rule_names(&self) -> Vec<&str> {
        self.rules.iter().map(|rule| rule.name.as_str()).collect()
    }

    /// Puts back an alert of rule `name` on `target` that fired at `severity` before a restart:
    /// its `for` is behind it, so a condition still true goes on firing, and one no longer true
    /// clears at the next evaluation (a target still missing after a few evaluations too).
    /// False when no rule has that name any more.
    pub fn restore(&mut self, name: &str, target: &str, severity: Severity, now: Instant) -> bool {
        if !self.rules.iter().any(|rule| rule.name == name) {
            return false;
        }
        self.pending.insert(
            (name.to_owned(), target.to_owned()),
            Pending {
                crossed: severity,
                since: now,
                firing: Some(severity),
                grace: RESTORED_GRACE,
            },
        );
        true
    }

    /// Whether some rule watches a metric (so the caller need not read the exposition
    /// otherwise).
    pub fn watches_metrics(&self) -> bool {
        self.rules.iter().any(|rule| {
            matches!(
                &rule.condition,
                Condition::Series {
                    source: Source::Metric(_),
                    ..
                }
            )
        })
    }

    /// The alerts to tell the manager at `now`: those firing, and those that fired until now and
    /// have cleared (once each); nothing for an alert still within its `for`. Rules over
    /// metrics see no series (see [`Evaluator::evaluate_with`]).
    pub fn evaluate(&mut self, signals: &Signals, now: Instant) -> Vec<AlertState> {
        self.evaluate_with(signals, &[], now)
    }

    /// As [`Evaluator::evaluate`], with the samples of the gateway's exposition for the rules
    /// over metrics.
    pub fn evaluate_with(
        &mut self,
        signals: &Signals,
        samples: &[Sample],
        now: Instant,
    ) -> Vec<AlertState> {
        let mut out = std::mem::take(&mut self.retired);
        let mut sampled: HashSet<(String, String)> = HashSet::new();
        // One rule's readings (target, raw value), the buffer reused from rule to rule.
        let mut raw: Vec<(Cow<'_, str>, f64)> = Vec::new();
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
            let Some(watch) = rule.condition.watch() else {
                continue;
            };
            // The readings: (target, raw value).
            // Plain loops: this runs for every rule every cycle (see the rules benchmark).
            raw.clear();
            match watch.source {
                SourceRef::Signal { signal, target } => {
                    for &(who, value) in by_name.get(signal).map_or(&[][..], Vec::as_slice) {
                        if target.is_none_or(|t| t == who.as_str()) {
                            raw.push((Cow::Borrowed(who.as_str()), value));
                        }
                    }
                }
                SourceRef::Metric(selector) => {
                    for sample in samples {
                        if selector.matches(sample) {
                            raw.push((Cow::Owned(series_target(sample)), sample.value));
                        }
                    }
                }
            }
            for (who, raw_value) in raw.drain(..) {
                let key = (rule.name.clone(), who.as_ref().to_owned());
                let value = match watch.function {
                    Function::Value => Some(raw_value),
                    function => {
                        sampled.insert(key.clone());
                        self.readings
                            .entry(key.clone())
                            .or_default()
                            .push(now, raw_value, function)
                    }
                };
                // A rate's first reading: nothing to compare yet, but the target is there.
                seen.insert(key.clone());
                let Some(value) = value else {
                    continue;
                };
                let crossed = watch
                    .thresholds
                    .iter()
                    .filter(|(_, limit)| match watch.direction {
                        Direction::Above => value >= **limit,
                        Direction::Below => value <= **limit,
                    })
                    .map(|(severity, _)| *severity)
                    .max();
                let stepped = step(&mut self.pending, key, crossed, rule.for_, now);
                if let Step::Firing(_) = stepped {
                    firing_rules.insert(rule.name.clone());
                }
                out.extend(state(rule, &who, Some(value), stepped));
            }
        }
        // The readings of a series (or target) that is gone go with it.
        self.readings.retain(|key, _| sampled.contains(key));
        // A target that vanished from the signals: its alert clears (after its grace, for one
        // put back by a restart, which meanwhile still counts as firing for compound rules).
        let compound = |name: &str| {
            self.rules.iter().any(|r| {
                r.name == name && matches!(r.condition, Condition::AllOf(..) | Condition::AnyOf(..))
            })
        };
        let gone: Vec<_> = self
            .pending
            .keys()
            .filter(|key| !seen.contains(*key) && !compound(&key.0))
            .cloned()
            .collect();
        for key in gone {
            if let Some(pending) = self.pending.get_mut(&key) {
                if pending.grace > 0 {
                    pending.grace -= 1;
                    if pending.firing.is_some() {
                        firing_rules.insert(key.0.clone());
                    }
                    continue;
                }
            }
            if let (Some(pending), Some(rule)) = (
                self.pending.remove(&key),
                self.rules.iter().find(|r| r.name == key.0),
            ) {
                if pending.firing.is_some() {
                    out.extend(state(rule, &key.1, None, Step::Cleared));
                }
            }
        }
        for rule in &self.rules {
            let (names, own, all) = match &rule.condition {
                Condition::AllOf(names, severity) => (names, *severity, true),
                Condition::AnyOf(names, severity) => (names, *severity, false),
                Condition::Threshold { .. } | Condition::Series { .. } => continue,
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
        grace: 0,
    });
    entry.grace = 0;
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
