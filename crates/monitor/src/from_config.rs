//! The config's `[alerts]` as rules and alert-manager settings.

use std::collections::BTreeMap;
use std::time::Duration;

use sekisho_config::{AlertDirection, AlertFunction, AlertSeverity, Alerts};

use crate::manager::{Labels, Receiver, Settings, Severity};
use crate::rules::{default_rules, Condition, Direction, Rule, Source};
use crate::series::{Function, Selector};

fn severity(s: AlertSeverity) -> Severity {
    match s {
        AlertSeverity::Info => Severity::Info,
        AlertSeverity::Warning => Severity::Warning,
        AlertSeverity::Critical => Severity::Critical,
        AlertSeverity::Emergency => Severity::Emergency,
    }
}

/// The rules in force: the default rules not turned off (a rule of the config with a default's
/// name replaces it), then the config's own, in order.
pub fn rules(alerts: &Alerts) -> Vec<Rule> {
    let own: Vec<Rule> = alerts
        .rules
        .iter()
        .map(|rule| {
            let r = rule.get_ref();
            let direction = match r.direction {
                AlertDirection::Above => Direction::Above,
                AlertDirection::Below => Direction::Below,
            };
            let thresholds: BTreeMap<Severity, f64> = r
                .thresholds()
                .into_iter()
                .map(|(s, v)| (severity(s), v))
                .collect();
            let window = r.window.as_ref().map_or(Duration::ZERO, |w| w.get_ref().0);
            let function = match r.function() {
                AlertFunction::Value => Function::Value,
                AlertFunction::Avg => Function::Avg(window),
                AlertFunction::Rate => Function::Rate(window),
            };
            let target = r.upstream.clone().or_else(|| r.route.clone());
            let condition = match (&r.signal, &r.metric) {
                (Some(signal), _) if function == Function::Value => Condition::Threshold {
                    signal: signal.clone(),
                    target,
                    direction,
                    thresholds,
                },
                (Some(signal), _) => Condition::Series {
                    source: Source::Signal {
                        signal: signal.clone(),
                        target,
                    },
                    function,
                    direction,
                    thresholds,
                },
                (None, Some(metric)) => Condition::Series {
                    source: Source::Metric(Selector {
                        metric: metric.get_ref().clone(),
                        matchers: r
                            .match_labels
                            .as_ref()
                            .map(|m| m.get_ref().clone().into_iter().collect())
                            .unwrap_or_default(),
                    }),
                    function,
                    direction,
                    thresholds,
                },
                (None, None) => {
                    let level = severity(r.severity.unwrap_or(AlertSeverity::Critical));
                    if r.all_of.is_empty() {
                        Condition::AnyOf(r.any_of.clone(), level)
                    } else {
                        Condition::AllOf(r.all_of.clone(), level)
                    }
                }
            };
            Rule {
                name: r.name.clone(),
                condition,
                for_: r.for_.0,
                labels: r.labels.clone().into_iter().collect::<Labels>(),
                annotations: r.annotations.clone().into_iter().collect::<Labels>(),
            }
        })
        .collect();
    let mut rules: Vec<Rule> = if alerts.default_rules {
        default_rules()
            .into_iter()
            .filter(|d| !alerts.disable.iter().any(|n| n.get_ref() == &d.name))
            .filter(|d| !own.iter().any(|o| o.name == d.name))
            .collect()
    } else {
        Vec::new()
    };
    rules.extend(own);
    rules
}

/// The alert manager's settings.
pub fn settings(alerts: &Alerts) -> Settings {
    Settings {
        group_by: alerts.group_by.clone(),
        group_wait: alerts.group_wait.0,
        group_interval: alerts.group_interval.0.max(Duration::from_millis(1)),
        repeat_interval: alerts.repeat_interval.0,
        receivers: alerts
            .receivers
            .iter()
            .map(|r| Receiver {
                name: r.get_ref().name.clone(),
                min_severity: severity(r.get_ref().min_severity),
            })
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_default_rules_are_the_ones_the_config_may_disable() {
        let ours: Vec<String> = default_rules().into_iter().map(|r| r.name).collect();
        let config: Vec<String> = sekisho_config::DEFAULT_RULES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(ours, config);
    }

    #[test]
    fn config_rules_replace_or_join_the_defaults_and_disable_removes_them() {
        let text = "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
                    [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
                    [alerts]\ndisable = [\"BackupTooOld\"]\n\
                    [[alerts.rules]]\nname = \"HighCpu\"\nsignal = \"cpu\"\nwarning = 0.5\n\
                    [[alerts.rules]]\nname = \"ApiDown\"\nsignal = \"no_healthy_targets\"\nupstream = \"api\"\ncritical = 1\n\
                    [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://127.0.0.1:1/x\"\nmin_severity = \"critical\"\n";
        let config = sekisho_config::parse(text, "t.toml").unwrap();
        let rules = rules(&config.alerts);
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert!(!names.contains(&"BackupTooOld"), "{names:?}");
        assert_eq!(names.iter().filter(|n| **n == "HighCpu").count(), 1);
        let cpu = rules.iter().find(|r| r.name == "HighCpu").unwrap();
        assert!(
            matches!(&cpu.condition, Condition::Threshold { thresholds, .. } if thresholds.get(&Severity::Warning) == Some(&0.5))
        );
        let api = rules.iter().find(|r| r.name == "ApiDown").unwrap();
        assert!(
            matches!(&api.condition, Condition::Threshold { target: Some(t), .. } if t == "api")
        );
        let s = settings(&config.alerts);
        assert_eq!(s.receivers[0].min_severity, Severity::Critical);
        assert_eq!(s.group_wait, Duration::from_secs(30));
    }
}
