#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Alert state across restarts (issue 16): a monitor whose alert fired and was notified is
//! stopped, and a new one on the same database (the same SQLite file; PostgreSQL too) puts back
//! what the first knew — a condition still true is not announced `firing` again and resolves to
//! the receiver that was told; one that cleared while the monitor was down gets its `resolved`
//! at the first cycle, also when the first run had recorded the resolution but not yet written
//! the notification; and an alert the first run never got to notify (stopped within
//! `group_wait`) is notified once; a receiver removed from the config is owed nothing. Each run
//! does what the binary's loop does: the cycle, the
//! history, the outbox rows, then what the receivers were told.

use std::time::{Duration, Instant};

use sekisho_db::testing::TestDatabase;
use sekisho_db::Dialect;
use sekisho_monitor::{Delivery, History, HistoryFilter, Monitor, Outbox, OutboxSettings, Signals};

const S: Duration = Duration::from_secs(1);

fn config(group_wait: &str, group_interval: &str) -> sekisho_config::Config {
    config_with(group_wait, group_interval, "")
}

/// The config, with more receivers (`[[alerts.receivers]]` tables).
fn config_with(group_wait: &str, group_interval: &str, more: &str) -> sekisho_config::Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
         [alerts]\ngroup_wait = \"{group_wait}\"\ngroup_interval = \"{group_interval}\"\ndefault_rules = false\n\
         [[alerts.rules]]\nname = \"ApiCircuitOpen\"\nsignal = \"circuit_open\"\nupstream = \"api\"\n\
         critical = 1\nfor = \"30s\"\n\
         [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://127.0.0.1:9/hook\"\n{more}"
    );
    sekisho_config::parse(&text, "restart.toml").unwrap()
}

fn circuit(open: bool) -> Signals {
    [(
        ("circuit_open".to_owned(), "api".to_owned()),
        if open { 1.0 } else { 0.0 },
    )]
    .into()
}

/// One run of the monitor on the database: what the binary's task holds.
struct Run {
    monitor: Monitor,
    outbox: Outbox,
    history: History,
    now: Instant,
}

impl Run {
    /// A monitor started on `test`'s database, with what the last run left put back.
    async fn start(test: &TestDatabase, config: &sekisho_config::Config) -> Self {
        let outbox = Outbox::open(test.open().await.unwrap(), OutboxSettings::default())
            .await
            .unwrap();
        let history = History::new(outbox.database().clone());
        let now = Instant::now();
        let mut monitor = Monitor::new(&config.alerts, now);
        let restored = history.restorable().await.unwrap();
        monitor.restore(&restored, now);
        Self {
            monitor,
            outbox,
            history,
            now,
        }
    }

    /// A cycle a second after the last, its outcome written as the binary writes it; the
    /// deliveries it made.
    async fn cycle(&mut self, signals: &Signals) -> Vec<Delivery> {
        self.now += S;
        let due = self.monitor.cycle(signals, self.now);
        for event in self.monitor.take_history() {
            self.history.record(&event).await.unwrap();
        }
        for delivery in &due {
            self.outbox.enqueue(delivery).await.unwrap();
        }
        for told in self.monitor.take_told() {
            self.history
                .record_told(&told, sekisho_db::now_millis())
                .await
                .unwrap();
        }
        due
    }

    /// Cycles over `signals` until one makes deliveries (at most `cycles`); them.
    async fn until_delivered(&mut self, signals: &Signals, cycles: usize) -> Vec<Delivery> {
        for _ in 0..cycles {
            let due = self.cycle(signals).await;
            if !due.is_empty() {
                return due;
            }
        }
        Vec::new()
    }

    /// The monitor stops: what it held in memory is gone, the database stays.
    async fn stop(self) {
        self.outbox.database().pool().close().await;
    }
}

fn statuses(deliveries: &[Delivery]) -> Vec<(&str, &str)> {
    deliveries
        .iter()
        .map(|d| (d.receiver.as_str(), d.status.as_str()))
        .collect()
}

/// Fires the alert in a first run (past its `for`) and lets the firing be notified; the
/// alert's fingerprint.
async fn fire_and_notify(first: &mut Run) -> String {
    assert!(first.cycle(&circuit(true)).await.is_empty(), "within `for`");
    let due = first.until_delivered(&circuit(true), 40).await;
    assert_eq!(statuses(&due), vec![("ops", "firing")]);
    due[0].fingerprints[0].clone()
}

async fn still_firing_is_not_announced_again_and_resolves_once(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let config = config("0s", "1s");
    let mut first = Run::start(&test, &config).await;
    let fingerprint = fire_and_notify(&mut first).await;
    first.stop().await;

    let mut second = Run::start(&test, &config).await;
    assert_eq!(second.monitor.manager().active(second.now).len(), 1);
    // Still true, past `group_wait`, `group_interval` and the rule's `for`: nothing new to say.
    for _ in 0..40 {
        let due = second.cycle(&circuit(true)).await;
        assert!(due.is_empty(), "announced again: {:?}", statuses(&due));
    }
    // The episode goes on: one row in the history, still open.
    let episodes = second
        .history
        .list(&HistoryFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(episodes.len(), 1);
    assert_eq!(episodes[0].state, "firing");
    // Cleared: the receiver that was told `firing` gets `resolved`.
    let due = second.until_delivered(&circuit(false), 3).await;
    assert_eq!(statuses(&due), vec![("ops", "resolved")]);
    assert_eq!(due[0].fingerprints, vec![fingerprint]);
    let episodes = second
        .history
        .list(&HistoryFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(episodes[0].state, "resolved");
    second.stop().await;
    // Nothing is owed any more: a third run would put nothing back.
    let third = Run::start(&test, &config).await;
    assert!(third.history.restorable().await.unwrap().is_empty());
    third.stop().await;
    test.remove().await.unwrap();
}

async fn cleared_while_down_gets_its_resolved(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    let config = config("0s", "1s");
    let mut first = Run::start(&test, &config).await;
    let fingerprint = fire_and_notify(&mut first).await;
    first.stop().await;

    let mut second = Run::start(&test, &config).await;
    let due = second.cycle(&circuit(false)).await;
    assert_eq!(statuses(&due), vec![("ops", "resolved")]);
    assert_eq!(due[0].fingerprints, vec![fingerprint]);
    let episodes = second
        .history
        .list(&HistoryFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(episodes[0].state, "resolved");
    second.stop().await;
    test.remove().await.unwrap();
}

async fn a_resolution_not_yet_notified_is_notified_after_the_restart(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    // A long group_interval: the first run records the resolution but stops before its flush.
    let config = config("0s", "1h");
    let mut first = Run::start(&test, &config).await;
    let fingerprint = fire_and_notify(&mut first).await;
    assert!(first.cycle(&circuit(false)).await.is_empty());
    let episodes = first
        .history
        .list(&HistoryFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(episodes[0].state, "resolved");
    first.stop().await;

    let mut second = Run::start(&test, &config).await;
    let due = second.cycle(&circuit(false)).await;
    assert_eq!(statuses(&due), vec![("ops", "resolved")]);
    assert_eq!(due[0].fingerprints, vec![fingerprint]);
    second.stop().await;
    test.remove().await.unwrap();
}

async fn a_firing_never_notified_is_notified_once_after_the_restart(dialect: Dialect) {
    let test = TestDatabase::new(dialect).await.unwrap();
    // Stopped within group_wait: the alert fired (and is in the history) but no one was told.
    let config = config("1h", "1s");
    let mut first = Run::start(&test, &config).await;
    for _ in 0..35 {
        assert!(first.cycle(&circuit(true)).await.is_empty());
    }
    first.stop().await;

    let config = self::config("5s", "1s");
    let mut second = Run::start(&test, &config).await;
    let due = second.until_delivered(&circuit(true), 10).await;
    assert_eq!(statuses(&due), vec![("ops", "firing")]);
    for _ in 0..10 {
        assert!(second.cycle(&circuit(true)).await.is_empty());
    }
    second.stop().await;
    test.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_receiver_gone_from_the_config_is_owed_nothing_after_the_restart() {
    let test = TestDatabase::new(Dialect::Sqlite).await.unwrap();
    let pager = "[[alerts.receivers]]\nname = \"pager\"\nwebhook = \"http://127.0.0.1:9/page\"\n";
    let with_pager = config_with("0s", "1s", pager);
    let mut first = Run::start(&test, &with_pager).await;
    assert!(first.cycle(&circuit(true)).await.is_empty());
    let due = first.until_delivered(&circuit(true), 40).await;
    assert_eq!(statuses(&due), vec![("ops", "firing"), ("pager", "firing")]);
    first.stop().await;

    // The pager is gone from the config: the alert resolves to `ops` only, and nothing of the
    // pager is kept.
    let mut second = Run::start(&test, &config("0s", "1s")).await;
    let due = second.cycle(&circuit(false)).await;
    assert_eq!(statuses(&due), vec![("ops", "resolved")]);
    assert!(second.history.restorable().await.unwrap().is_empty());
    second.stop().await;
    test.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_alert_still_firing_after_a_restart_is_not_announced_again() {
    still_firing_is_not_announced_again_and_resolves_once(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_alert_still_firing_after_a_restart_is_not_announced_again() {
    still_firing_is_not_announced_again_and_resolves_once(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_alert_that_cleared_while_down_gets_its_resolved() {
    cleared_while_down_gets_its_resolved(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_alert_that_cleared_while_down_gets_its_resolved() {
    cleared_while_down_gets_its_resolved(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_resolution_not_yet_notified_is_notified_after_the_restart() {
    a_resolution_not_yet_notified_is_notified_after_the_restart(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_firing_never_notified_is_notified_once_after_the_restart() {
    a_firing_never_notified_is_notified_once_after_the_restart(Dialect::Sqlite).await;
}
