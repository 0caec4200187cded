#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The alert history on real SQLite and PostgreSQL (issue 16): episodes written from the
//! monitor's own events (an alert fires, rises, is acknowledged, resolves), read back a page at a
//! time with a cursor and filters, counted in the statistics, and removed after the retention —
//! open ones never.

use std::time::{Duration, Instant};

use sekisho_db::testing::TestDatabase;
use sekisho_db::{now_millis, Dialect};
use sekisho_monitor::{
    History, HistoryEvent, HistoryFilter, Monitor, Outbox, OutboxSettings, Severity, Signals,
};

fn config() -> sekisho_config::Config {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
         [alerts]\ngroup_wait = \"0s\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"ApiErrors\"\nsignal = \"upstream_error_rate\"\nwarning = 0.1\ncritical = 0.5\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://127.0.0.1:9/hook\"\n";
    sekisho_config::parse(text, "history.toml").unwrap()
}

fn fired(fingerprint: &str, name: &str, severity: Severity, at: i64) -> HistoryEvent {
    HistoryEvent::Fired {
        fingerprint: fingerprint.to_owned(),
        labels: [
            ("alertname".to_owned(), name.to_owned()),
            ("target".to_owned(), "api".to_owned()),
        ]
        .into(),
        annotations: [("summary".to_owned(), "s".to_owned())].into(),
        severity,
        at,
    }
}

async fn episodes_from_the_monitor_are_kept_paged_and_counted(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    // The outbox migrates the database, as in the binary.
    let outbox = Outbox::open(test.open().await.unwrap(), OutboxSettings::default())
        .await
        .unwrap();
    let history = History::new(outbox.database().clone());

    // The monitor's own events: two upstreams start failing, one rises to critical, one clears.
    let mut now = Instant::now();
    let mut monitor = Monitor::new(&config().alerts, now);
    let mut signals = Signals::new();
    signals.insert(("upstream_error_rate".to_owned(), "api".to_owned()), 0.2);
    signals.insert(("upstream_error_rate".to_owned(), "web".to_owned()), 0.2);
    let write = async |monitor: &mut Monitor, signals: &Signals, now: Instant| {
        monitor.cycle(signals, now);
        let events = monitor.take_history();
        for event in &events {
            history.record(event).await.unwrap();
        }
        events
    };
    let events = write(&mut monitor, &signals, now).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events
        .iter()
        .all(|e| matches!(e, HistoryEvent::Fired { .. })));
    now += Duration::from_secs(5);
    signals.insert(("upstream_error_rate".to_owned(), "api".to_owned()), 0.9);
    let events = write(&mut monitor, &signals, now).await;
    assert!(
        matches!(
            events.as_slice(),
            [HistoryEvent::Severity {
                severity: Severity::Critical,
                ..
            }]
        ),
        "{events:?}"
    );
    // Unchanged: nothing to write.
    assert!(write(&mut monitor, &signals, now).await.is_empty());

    let open = history
        .list(&HistoryFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(open.len(), 2);
    let api = open.iter().find(|e| e.target == "api").unwrap().clone();
    assert_eq!(
        (
            api.state.as_str(),
            api.severity.as_str(),
            api.peak_severity.as_str()
        ),
        ("firing", "critical", "critical")
    );
    assert!(history
        .acknowledge(&api.fingerprint, "ada", monitor.unix_millis(now))
        .await
        .unwrap());
    assert!(!history
        .acknowledge("0000000000000000", "ada", 1)
        .await
        .unwrap());

    // It falls back to warning (the peak stays critical), then clears.
    now += Duration::from_secs(5);
    signals.insert(("upstream_error_rate".to_owned(), "api".to_owned()), 0.2);
    write(&mut monitor, &signals, now).await;
    now += Duration::from_secs(30);
    signals.insert(("upstream_error_rate".to_owned(), "api".to_owned()), 0.0);
    let events = write(&mut monitor, &signals, now).await;
    assert!(
        matches!(events.as_slice(), [HistoryEvent::Resolved { .. }]),
        "{events:?}"
    );

    let resolved = history
        .list(
            &HistoryFilter {
                state: Some("resolved".to_owned()),
                ..HistoryFilter::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(resolved.len(), 1);
    let episode = &resolved[0];
    assert_eq!(episode.fingerprint, api.fingerprint);
    assert_eq!(
        (episode.severity.as_str(), episode.peak_severity.as_str()),
        ("warning", "critical")
    );
    assert_eq!(episode.acked_by.as_deref(), Some("ada"));
    assert_eq!(episode.duration_ms, Some(40_000));
    assert_eq!(episode.labels["alertname"], "ApiErrors");

    // A gateway that restarts while `web` fires: the new monitor's `Fired` continues the open
    // episode instead of opening a second one.
    let mut restarted = Monitor::new(&config().alerts, now);
    let events = write(&mut restarted, &signals, now).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let firing = history
        .list(
            &HistoryFilter {
                state: Some("firing".to_owned()),
                ..HistoryFilter::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].target, "web");

    // Pages: newest first, the cursor is the last id of a page.
    for n in 0..5 {
        history
            .record(&fired(
                &format!("fp{n}"),
                "Paged",
                Severity::Info,
                now_millis(),
            ))
            .await
            .unwrap();
    }
    let by_name = HistoryFilter {
        alertname: Some("Paged".to_owned()),
        ..HistoryFilter::default()
    };
    let first = history.list(&by_name, None, 2).await.unwrap();
    let second = history.list(&by_name, Some(first[1].id), 2).await.unwrap();
    let third = history.list(&by_name, Some(second[1].id), 2).await.unwrap();
    let fingerprints: Vec<&str> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|e| e.fingerprint.as_str())
        .collect();
    assert_eq!(fingerprints, ["fp4", "fp3", "fp2", "fp1", "fp0"]);
    let only = HistoryFilter {
        fingerprint: Some("fp3".to_owned()),
        since: Some(0),
        ..HistoryFilter::default()
    };
    assert_eq!(history.list(&only, None, 10).await.unwrap().len(), 1);

    // Statistics: fired in the last day (the monitor's two, the five paged), resolved, active.
    let stats = history.stats(now_millis()).await.unwrap();
    assert_eq!(stats.fired_last_24h, 7, "{stats:?}");
    assert_eq!(stats.resolved_last_24h, 1);
    assert_eq!(stats.active, 6);
    assert_eq!(stats.active_acknowledged, 0);
    assert_eq!(stats.mean_time_to_resolve_seconds, Some(40.0));
    assert_eq!(stats.fired_last_24h_by_severity.get("critical"), Some(&1));
    assert_eq!(stats.fired_last_24h_by_severity.get("info"), Some(&5));

    // Retention: the resolved episode goes once it is older than the retention; open ones stay.
    let later = episode.resolved_at.unwrap() + 3_600_000;
    assert_eq!(
        history
            .purge(Duration::from_secs(7200), later)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        history.purge(Duration::from_secs(60), later).await.unwrap(),
        1
    );
    assert_eq!(
        history
            .list(&HistoryFilter::default(), None, 100)
            .await
            .unwrap()
            .len(),
        6
    );
    test.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_episodes_from_the_monitor_are_kept_paged_and_counted() {
    episodes_from_the_monitor_are_kept_paged_and_counted(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_episodes_from_the_monitor_are_kept_paged_and_counted() {
    episodes_from_the_monitor_are_kept_paged_and_counted(Dialect::Postgres).await;
}
