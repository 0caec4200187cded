#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const S: Duration = Duration::from_secs(1);

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn settings(receivers: &[(&str, Severity)]) -> Settings {
    Settings {
        group_by: vec!["alertname".to_owned()],
        group_wait: 30 * S,
        group_interval: 300 * S,
        repeat_interval: 4 * 3600 * S,
        receivers: receivers
            .iter()
            .map(|(name, min)| Receiver {
                name: (*name).to_owned(),
                min_severity: *min,
            })
            .collect(),
    }
}

fn fire(m: &mut AlertManager, name: &str, target: &str, severity: Severity, at: Instant) -> String {
    m.observe(
        labels(&[("alertname", name), ("target", target)]),
        Labels::new(),
        Some(severity),
        at,
    )
}

fn clear(m: &mut AlertManager, name: &str, target: &str, at: Instant) {
    m.observe(
        labels(&[("alertname", name), ("target", target)]),
        Labels::new(),
        None,
        at,
    );
}

/// A notification in short: receiver, status, and each alert's target and status.
type Told = (String, Status, Vec<(String, Status)>);

fn summary(notes: &[Notification]) -> Vec<Told> {
    notes
        .iter()
        .map(|n| {
            (
                n.receiver.clone(),
                n.status,
                n.alerts
                    .iter()
                    .map(|a| (a.labels["target"].clone(), a.status))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn the_fingerprint_is_the_labels_whatever_their_order() {
    let a = labels(&[("alertname", "X"), ("target", "orders")]);
    let b: Labels = [("target", "orders"), ("alertname", "X")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(fingerprint(&a), fingerprint(&b));
    assert_eq!(fingerprint(&a).len(), 16);
    assert_ne!(
        fingerprint(&a),
        fingerprint(&labels(&[("alertname", "X"), ("target", "payments")]))
    );
    // The separator keeps "ab"+"c" apart from "a"+"bc".
    assert_ne!(
        fingerprint(&labels(&[("ab", "c")])),
        fingerprint(&labels(&[("a", "bc")]))
    );
}

#[test]
fn a_new_group_waits_group_wait_and_then_tells_its_alerts_together() {
    let t0 = Instant::now();
    let mut m = AlertManager::new(settings(&[("ops", Severity::Info)]));
    fire(&mut m, "UpstreamDown", "orders", Severity::Critical, t0);
    fire(
        &mut m,
        "UpstreamDown",
        "payments",
        Severity::Critical,
        t0 + S,
    );
    assert!(m.flush(t0 + 29 * S).is_empty(), "still gathering");
    let notes = m.flush(t0 + 30 * S);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(
        (notes[0].receiver.as_str(), notes[0].status),
        ("ops", Status::Firing)
    );
    let mut targets: Vec<_> = notes[0]
        .alerts
        .iter()
        .map(|a| (a.labels["target"].as_str(), a.status))
        .collect();
    targets.sort_by_key(|(target, _)| *target);
    assert_eq!(
        targets,
        vec![("orders", Status::Firing), ("payments", Status::Firing)]
    );
    assert_eq!(notes[0].group_key, "{}:{alertname=\"UpstreamDown\"}");
}

#[test]
fn an_unchanged_group_is_not_told_again_until_repeat_interval_and_never_once_acked() {
    let t0 = Instant::now();
    let mut m = AlertManager::new(settings(&[("ops", Severity::Info)]));
    let fp = fire(&mut m, "Cpu", "gateway", Severity::Warning, t0);
    assert_eq!(m.flush(t0 + 30 * S).len(), 1);
    // Evaluated again and again, the same state: nothing new to say.
    fire(&mut m, "Cpu", "gateway", Severity::Warning, t0 + 60 * S);
    assert!(m.flush(t0 + 400 * S).is_empty(), "deduplicated");
    let repeat = m.flush(t0 + 30 * S + 4 * 3600 * S);
    assert_eq!(repeat.len(), 1, "repeat_interval passed");
    assert!(m.acknowledge(&fp));
    assert!(
        m.flush(t0 + 30 * S + 8 * 3600 * S + S).is_empty(),
        "acknowledged: no repeats"
    );
    assert!(!m.acknowledge("0000000000000000"));
}

#[test]
fn a_resolved_always_follows_its_firing_and_only_to_those_told() {
    let t0 = Instant::now();
    let mut m = AlertManager::new(settings(&[("ops", Severity::Info)]));
    fire(&mut m, "Errors", "orders", Severity::Critical, t0);
    assert_eq!(m.flush(t0 + 30 * S).len(), 1);
    clear(&mut m, "Errors", "orders", t0 + 60 * S);
    assert!(
        m.flush(t0 + 100 * S).is_empty(),
        "group_interval not yet passed"
    );
    let notes = m.flush(t0 + 330 * S);
    assert_eq!(
        summary(&notes),
        vec![(
            "ops".to_owned(),
            Status::Resolved,
            vec![("orders".to_owned(), Status::Resolved)]
        )]
    );
    assert!(notes[0].alerts[0].ends_at.is_some());
    assert!(m.active(t0 + 330 * S).is_empty(), "forgotten once told");
    assert!(m.flush(t0 + 10_000 * S).is_empty(), "told once");

    // Fired and cleared inside group_wait: nobody was told it fired, so no resolved either.
    fire(&mut m, "Blip", "orders", Severity::Warning, t0 + 20_000 * S);
    clear(&mut m, "Blip", "orders", t0 + 20_010 * S);
    assert!(m.flush(t0 + 20_030 * S).is_empty());
    assert!(m.flush(t0 + 30_000 * S).is_empty());
}

#[test]
fn a_rise_in_severity_re_notifies_and_escalates_to_more_receivers() {
    let t0 = Instant::now();
    let mut m = AlertManager::new(settings(&[
        ("ops", Severity::Warning),
        ("pager", Severity::Critical),
    ]));
    let fp = fire(&mut m, "Latency", "orders", Severity::Warning, t0);
    let first = m.flush(t0 + 30 * S);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receiver, "ops");
    m.acknowledge(&fp);
    fire(&mut m, "Latency", "orders", Severity::Critical, t0 + 40 * S);
    assert!(m.flush(t0 + 100 * S).is_empty(), "at group_interval");
    let risen = m.flush(t0 + 330 * S);
    let receivers: Vec<_> = risen.iter().map(|n| n.receiver.as_str()).collect();
    assert_eq!(receivers, vec!["ops", "pager"], "{risen:?}");
    assert!(risen
        .iter()
        .all(|n| n.alerts[0].severity == Severity::Critical));
    clear(&mut m, "Latency", "orders", t0 + 400 * S);
    let resolved = m.flush(t0 + 700 * S);
    assert_eq!(resolved.len(), 2, "both were told it fired: {resolved:?}");
    assert!(resolved.iter().all(|n| n.status == Status::Resolved));
}

#[test]
fn a_silence_mutes_matching_alerts_until_it_ends() {
    let t0 = Instant::now();
    let mut m = AlertManager::new(settings(&[("ops", Severity::Info)]));
    m.silence(Silence {
        matchers: vec![
            Matcher::Equal("alertname".to_owned(), "Disk".to_owned()),
            Matcher::NotEqual("target".to_owned(), "db".to_owned()),
        ],
        until: t0 + 3600 * S,
        comment: "maintenance, ada".to_owned(),
    });
    let quiet = fire(&mut m, "Disk", "gateway", Severity::Critical, t0);
    let loud = fire(&mut m, "Disk", "db", Severity::Critical, t0);
    assert!(m.muted(&quiet, t0));
    assert!(!m.muted(&loud, t0));
    let notes = m.flush(t0 + 30 * S);
    assert_eq!(
        summary(&notes),
        vec![(
            "ops".to_owned(),
            Status::Firing,
            vec![("db".to_owned(), Status::Firing)]
        )]
    );
    // The silence ends: the muted alert is news at the next group_interval.
    let after = m.flush(t0 + 3600 * S + S);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].alerts.len(), 2, "{after:?}");
}

#[test]
fn a_higher_severity_inhibits_lower_ones_for_the_same_target() {
    let t0 = Instant::now();
    let mut m = AlertManager::new(Settings {
        group_by: vec!["target".to_owned()],
        ..settings(&[("ops", Severity::Info)])
    });
    fire(&mut m, "NoHealthyTarget", "orders", Severity::Critical, t0);
    let slow = fire(&mut m, "SlowResponses", "orders", Severity::Warning, t0);
    let other = fire(&mut m, "SlowResponses", "payments", Severity::Warning, t0);
    assert!(m.muted(&slow, t0), "orders' critical inhibits its warning");
    assert!(!m.muted(&other, t0), "another target is not inhibited");
    let notes = m.flush(t0 + 30 * S);
    let told: Vec<Vec<String>> = notes
        .iter()
        .map(|n| {
            n.alerts
                .iter()
                .map(|a| a.labels["alertname"].clone())
                .collect()
        })
        .collect();
    assert_eq!(
        told,
        vec![
            vec!["NoHealthyTarget".to_owned()],
            vec!["SlowResponses".to_owned()]
        ],
        "{notes:?}"
    );
    // The critical one clears: the warning is no longer inhibited.
    clear(&mut m, "NoHealthyTarget", "orders", t0 + 40 * S);
    assert!(!m.muted(&slow, t0 + 40 * S));
}
