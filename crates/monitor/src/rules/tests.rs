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

fn series_rule(name: &str, source: Source, function: Function, warning: f64) -> Rule {
    Rule {
        name: name.to_owned(),
        condition: Condition::Series {
            source,
            function,
            direction: Direction::Above,
            thresholds: [(Severity::Warning, warning)].into(),
        },
        for_: Duration::ZERO,
        labels: Labels::new(),
        annotations: Labels::new(),
    }
}

/// An exposition with the 5xx and 2xx counters of route `orders` at these values.
fn exposition(five: u64, two: u64) -> Vec<Sample> {
    crate::series::parse_exposition(&format!(
        "# TYPE sekisho_requests counter\n\
         sekisho_requests_total{{route=\"orders\",upstream=\"orders\",class=\"5xx\"}} {five}\n\
         sekisho_requests_total{{route=\"orders\",upstream=\"orders\",class=\"2xx\"}} {two}\n"
    ))
}

#[test]
fn a_rule_on_the_rate_of_a_counter_fires_per_series_and_resolves_when_it_stops() {
    let t0 = Instant::now();
    let five_xx = Selector {
        metric: "sekisho_requests_total".to_owned(),
        matchers: [("class".to_owned(), "5xx".to_owned())].into(),
    };
    let mut e = Evaluator::new(vec![series_rule(
        "Orders5xx",
        Source::Metric(five_xx),
        Function::Rate(10 * S),
        1.0,
    )]);
    assert!(e.watches_metrics());
    let target = "{class=\"5xx\",route=\"orders\",upstream=\"orders\"}";
    // A first reading: no rate yet; then 2xx traffic alone moves nothing.
    assert!(e
        .evaluate_with(&Signals::new(), &exposition(0, 0), t0)
        .is_empty());
    assert!(e
        .evaluate_with(&Signals::new(), &exposition(0, 500), t0 + 5 * S)
        .is_empty());
    // 30 errors in 5 s: 30 / 10 s since the first reading = 3/s ≥ 1/s.
    let states = e.evaluate_with(&Signals::new(), &exposition(30, 900), t0 + 10 * S);
    assert_eq!(
        fired(&states),
        vec![(
            "Orders5xx".to_owned(),
            target.to_owned(),
            Some(Severity::Warning)
        )]
    );
    assert_eq!(states[0].annotations["value"], "3");
    // The errors stop: the window still holds them for a while, then the rate is 0 → resolved.
    let states = e.evaluate_with(&Signals::new(), &exposition(30, 900), t0 + 15 * S);
    assert_eq!(fired(&states)[0].2, Some(Severity::Warning));
    let states = e.evaluate_with(&Signals::new(), &exposition(30, 900), t0 + 25 * S);
    assert_eq!(
        fired(&states),
        vec![("Orders5xx".to_owned(), target.to_owned(), None)]
    );
    // Without the exposition the rule sees no series (the plain `evaluate`).
    assert!(e.evaluate(&Signals::new(), t0 + 30 * S).is_empty());
}

#[test]
fn a_signal_with_a_window_is_averaged_over_it() {
    let t0 = Instant::now();
    let mut e = Evaluator::new(vec![series_rule(
        "ApiFailing",
        Source::Signal {
            signal: "upstream_error_rate".to_owned(),
            target: Some("api".to_owned()),
        },
        Function::Avg(30 * S),
        0.5,
    )]);
    assert!(!e.watches_metrics());
    let reading = |value: f64| {
        signals(&[
            ("upstream_error_rate", "api", value),
            ("upstream_error_rate", "other", 1.0),
        ])
    };
    // One bad reading among good ones stays under the mean's threshold …
    assert!(e.evaluate(&reading(0.0), t0).is_empty());
    assert!(e.evaluate(&reading(0.9), t0 + 10 * S).is_empty());
    // … a second one crosses it: (0 + 0.9 + 0.9) / 3 = 0.6.
    let states = e.evaluate(&reading(0.9), t0 + 20 * S);
    assert_eq!(
        fired(&states),
        vec![(
            "ApiFailing".to_owned(),
            "api".to_owned(),
            Some(Severity::Warning)
        )]
    );
    // Good again: the mean falls to (0 + 0.9 + 0.9 + 0) / 4 = 0.45 and the alert clears.
    let states = e.evaluate(&reading(0.0), t0 + 30 * S);
    assert_eq!(
        fired(&states),
        vec![("ApiFailing".to_owned(), "api".to_owned(), None)]
    );
    // Once the bad readings left the window, one bad reading among good ones is its mean alone:
    // (0 + 0 + 0 + 0.9) / 4 (the window holds both ends), quiet.
    e.evaluate(&reading(0.0), t0 + 40 * S);
    e.evaluate(&reading(0.0), t0 + 50 * S);
    let states = e.evaluate(&reading(0.9), t0 + 60 * S);
    assert!(states.is_empty(), "{states:?}");
}

#[test]
fn a_restored_alert_waits_a_few_evaluations_for_its_target_then_goes_on_or_clears() {
    let t0 = Instant::now();
    let rules = vec![
        rule(
            "HighCpu",
            "cpu",
            Direction::Above,
            &[(Severity::Critical, 0.85)],
            60 * S,
        ),
        Rule {
            name: "Meltdown".to_owned(),
            condition: Condition::AnyOf(vec!["HighCpu".into()], Severity::Emergency),
            for_: Duration::ZERO,
            labels: Labels::new(),
            annotations: Labels::new(),
        },
    ];
    let mut e = Evaluator::new(rules.clone());
    assert!(e.restore("HighCpu", "gateway", Severity::Critical, t0));
    assert!(!e.restore("Gone", "gateway", Severity::Critical, t0));
    // The first readings have no CPU share yet: the alert neither clears nor stops counting
    // for the compound rule.
    let states = e.evaluate(&Signals::new(), t0 + S);
    assert_eq!(
        fired(&states),
        vec![(
            "Meltdown".to_owned(),
            "gateway".to_owned(),
            Some(Severity::Emergency)
        )]
    );
    // The share is back, still high: it fires on at once (its `for` is behind it).
    let states = e.evaluate(&signals(&[("cpu", "gateway", 0.95)]), t0 + 2 * S);
    assert!(fired(&states).contains(&(
        "HighCpu".to_owned(),
        "gateway".to_owned(),
        Some(Severity::Critical)
    )));

    // A target that never comes back clears once the grace is over.
    let mut e = Evaluator::new(rules);
    e.restore("HighCpu", "gateway", Severity::Critical, t0);
    for i in 1..=3 {
        let states = e.evaluate(&Signals::new(), t0 + i * S);
        assert!(
            !fired(&states)
                .iter()
                .any(|(name, _, s)| name == "HighCpu" && s.is_none()),
            "{states:?}"
        );
    }
    let states = e.evaluate(&Signals::new(), t0 + 4 * S);
    assert!(fired(&states).contains(&("HighCpu".to_owned(), "gateway".to_owned(), None)));
}
