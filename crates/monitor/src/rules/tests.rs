#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const S: Duration = Duration::from_secs(1);

fn signals(pairs: &[(&str, &str, f64)]) -> Signals {
    pairs
        .iter()
        .map(|(signal, target, value)| (((*signal).to_owned(), (*target).to_owned()), *value))
        .collect()
}

fn rule(
    name: &str,
    signal: &str,
    direction: Direction,
    thresholds: &[(Severity, f64)],
    for_: Duration,
) -> Rule {
    Rule {
        name: name.to_owned(),
        condition: Condition::Threshold {
            signal: signal.to_owned(),
            target: None,
            direction,
            thresholds: thresholds.iter().copied().collect(),
        },
        for_,
        labels: Labels::new(),
        annotations: Labels::new(),
    }
}

fn fired(states: &[AlertState]) -> Vec<(String, String, Option<Severity>)> {
    let mut out: Vec<_> = states
        .iter()
        .map(|s| {
            (
                s.labels["alertname"].clone(),
                s.labels["target"].clone(),
                s.severity,
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_highest_severity_crossed_fires_after_for_and_clears_once() {
    let t0 = Instant::now();
    let mut e = Evaluator::new(vec![rule(
        "Errors",
        "upstream_error_rate",
        Direction::Above,
        &[(Severity::Warning, 0.05), (Severity::Critical, 0.5)],
        30 * S,
    )]);
    let bad = signals(&[
        ("upstream_error_rate", "orders", 0.6),
        ("upstream_error_rate", "payments", 0.01),
    ]);
    assert!(e.evaluate(&bad, t0).is_empty(), "within `for`");
    assert!(e.evaluate(&bad, t0 + 29 * S).is_empty());
    assert_eq!(
        fired(&e.evaluate(&bad, t0 + 30 * S)),
        vec![("Errors".into(), "orders".into(), Some(Severity::Critical))]
    );
    // A fall is taken at once.
    let better = signals(&[("upstream_error_rate", "orders", 0.1)]);
    assert_eq!(
        fired(&e.evaluate(&better, t0 + 31 * S)),
        vec![("Errors".into(), "orders".into(), Some(Severity::Warning))]
    );
    // A rise waits its own `for`.
    assert_eq!(
        fired(&e.evaluate(&bad, t0 + 32 * S)),
        vec![("Errors".into(), "orders".into(), Some(Severity::Warning))]
    );
    assert_eq!(
        fired(&e.evaluate(&bad, t0 + 62 * S)),
        vec![("Errors".into(), "orders".into(), Some(Severity::Critical))]
    );
    let fine = signals(&[("upstream_error_rate", "orders", 0.0)]);
    assert_eq!(
        fired(&e.evaluate(&fine, t0 + 63 * S)),
        vec![("Errors".into(), "orders".into(), None)],
        "cleared, told once"
    );
    assert!(e.evaluate(&fine, t0 + 64 * S).is_empty());
}

#[test]
fn below_rules_fire_on_low_values_and_a_vanished_target_clears() {
    let t0 = Instant::now();
    let mut e = Evaluator::new(vec![rule(
        "TlsExpiring",
        "tls_expiry_days",
        Direction::Below,
        &[(Severity::Warning, 30.0), (Severity::Critical, 7.0)],
        Duration::ZERO,
    )]);
    let states = e.evaluate(
        &signals(&[
            ("tls_expiry_days", "listener", 5.0),
            ("tls_expiry_days", "admin", 90.0),
        ]),
        t0,
    );
    assert_eq!(
        fired(&states),
        vec![(
            "TlsExpiring".into(),
            "listener".into(),
            Some(Severity::Critical)
        )]
    );
    assert_eq!(states[0].annotations["value"], "5");
    assert_eq!(
        fired(&e.evaluate(&Signals::new(), t0 + S)),
        vec![("TlsExpiring".into(), "listener".into(), None)]
    );
}

#[test]
fn compound_rules_fire_while_all_or_any_of_their_rules_fire() {
    let t0 = Instant::now();
    let mut rules = vec![
        rule(
            "Overall",
            "cpu",
            Direction::Above,
            &[(Severity::Critical, 0.85)],
            Duration::ZERO,
        ),
        rule(
            "DatabaseDown",
            "database_down",
            Direction::Above,
            &[(Severity::Critical, 1.0)],
            Duration::ZERO,
        ),
    ];
    rules.push(Rule {
        name: "Emergency".into(),
        condition: Condition::AllOf(
            vec!["Overall".into(), "DatabaseDown".into()],
            Severity::Emergency,
        ),
        for_: Duration::ZERO,
        labels: Labels::new(),
        annotations: Labels::new(),
    });
    rules.push(Rule {
        name: "Trouble".into(),
        condition: Condition::AnyOf(
            vec!["Overall".into(), "DatabaseDown".into()],
            Severity::Warning,
        ),
        for_: Duration::ZERO,
        labels: Labels::new(),
        annotations: Labels::new(),
    });
    let mut e = Evaluator::new(rules);
    let one = fired(&e.evaluate(
        &signals(&[("cpu", "gateway", 0.9), ("database_down", "db", 0.0)]),
        t0,
    ));
    assert!(
        one.contains(&("Trouble".into(), "gateway".into(), Some(Severity::Warning))),
        "{one:?}"
    );
    assert!(!one.iter().any(|(n, _, _)| n == "Emergency"), "{one:?}");
    let both = fired(&e.evaluate(
        &signals(&[("cpu", "gateway", 0.9), ("database_down", "db", 1.0)]),
        t0 + S,
    ));
    assert!(
        both.contains(&(
            "Emergency".into(),
            "gateway".into(),
            Some(Severity::Emergency)
        )),
        "{both:?}"
    );
    let none = fired(&e.evaluate(
        &signals(&[("cpu", "gateway", 0.1), ("database_down", "db", 0.0)]),
        t0 + 2 * S,
    ));
    assert!(
        none.contains(&("Emergency".into(), "gateway".into(), None)),
        "{none:?}"
    );
    assert!(
        none.contains(&("Trouble".into(), "gateway".into(), None)),
        "{none:?}"
    );
}

#[test]
fn the_default_rules_cover_the_seeds_and_fire_as_documented() {
    let names: Vec<_> = default_rules().into_iter().map(|r| r.name).collect();
    for expected in [
        "HighCpu",
        "HighMemory",
        "SlowResponses",
        "ServerErrors",
        "NoHealthyTarget",
        "CircuitOpen",
        "BackupTooOld",
        "TlsExpiring",
        "FailedLoginBurst",
        "NotificationsStuck",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing");
    }
    let t0 = Instant::now();
    let mut e = Evaluator::new(default_rules());
    let s = signals(&[
        ("cpu", "gateway", 0.9),
        ("circuit_open", "payments", 1.0),
        ("route_error_rate", "orders", 0.05),
        ("notification_oldest_pending_seconds", "gateway", 400.0),
    ]);
    e.evaluate(&s, t0);
    let later = fired(&e.evaluate(&s, t0 + 61 * S));
    assert!(
        later.contains(&("HighCpu".into(), "gateway".into(), Some(Severity::Critical))),
        "{later:?}"
    );
    assert!(
        later.contains(&(
            "CircuitOpen".into(),
            "payments".into(),
            Some(Severity::Warning)
        )),
        "{later:?}"
    );
    assert!(
        later.contains(&(
            "NotificationsStuck".into(),
            "gateway".into(),
            Some(Severity::Warning)
        )),
        "{later:?}"
    );
    assert!(
        !later.iter().any(|(n, _, _)| n == "ServerErrors"),
        "5 % is under 10 %: {later:?}"
    );
}
