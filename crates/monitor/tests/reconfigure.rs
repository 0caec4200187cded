#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A reloaded `[alerts]` applied to a running monitor: a rule it adds fires, a rule it removes
//! has its alert resolved (a `resolved` notification follows the `firing` one), and the rules
//! kept keep their state.

use std::time::{Duration, Instant};

use sekisho_monitor::{Monitor, Signals};

fn alerts(rules: &str) -> sekisho_config::Alerts {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
         [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"1s\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"Errors\"\nsignal = \"upstream_error_rate\"\nwarning = 0.1\n\
         {rules}\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://127.0.0.1:9/hook\"\n"
    );
    sekisho_config::parse(&text, "reconfigure.toml")
        .unwrap()
        .alerts
}

#[test]
fn a_rule_added_by_a_reload_fires_and_one_removed_resolves() {
    let slow =
        "[[alerts.rules]]\nname = \"Slow\"\nsignal = \"upstream_latency_p95\"\nwarning = 1\n";
    let mut now = Instant::now();
    let mut monitor = Monitor::new(&alerts(""), now);
    let mut signals = Signals::new();
    signals.insert(("upstream_error_rate".to_owned(), "api".to_owned()), 0.5);
    signals.insert(("upstream_latency_p95".to_owned(), "api".to_owned()), 2.0);
    let sent = monitor.cycle(&signals, now);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].body.to_string().contains("\"Errors\""),
        "{}",
        sent[0].body
    );

    monitor.reconfigure(&alerts(slow));
    assert_eq!(monitor.rule_names(), vec!["Errors", "Slow"]);
    now += Duration::from_secs(2);
    let sent = monitor.cycle(&signals, now);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].body.to_string().contains("\"Slow\""),
        "{}",
        sent[0].body
    );
    assert!(sent[0].status == "firing", "{}", sent[0].body);

    monitor.reconfigure(&alerts(""));
    now += Duration::from_secs(2);
    let sent = monitor.cycle(&signals, now);

    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].body.to_string().contains("\"Slow\""),
        "{}",
        sent[0].body
    );
    assert!(sent[0].status == "resolved", "{}", sent[0].body);
    // Errors went on firing throughout: never announced again, never resolved.
    now += Duration::from_secs(2);
    assert!(monitor.cycle(&signals, now).is_empty());
}
