//! `run`'s alerting task: the gateway's figures and the host's vitals as signals (and its
//! metrics exposition, for rules over metrics), evaluated by
//! `sekisho-monitor`, each notification written to the outbox (whose worker sends it) and what
//! happened to each alert to the alert history.

use sekisho_gateway::Gateway;
use sekisho_monitor::{Delivery, Outbox};

/// Notifications kept in memory while the database cannot take them, at most (the oldest are
/// dropped beyond, loudly).
const BACKLOG: usize = 10_000;
/// How often resolved alerts past `alerts.history_retention` are removed.
const HISTORY_PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Watches the gateway every `monitor.interval`: its upstreams, circuits and the host's vitals
/// as signals, the alert rules over them, each notification due written to `outbox` (the
/// config at start; a reload does not change the rules yet).
pub(crate) async fn monitor(
    gateway: Gateway,
    shared: sekisho_admin::SharedMonitor,
    outbox: Outbox,
    data_dir: std::path::PathBuf,
    certificate: Option<std::path::PathBuf>,
) {
    let interval = gateway.config().monitor.interval.0;
    let history = sekisho_monitor::History::new(outbox.database().clone());
    let history_retention = gateway.config().alerts.history_retention.0;
    let mut last_purge: Option<std::time::Instant> = None;
    // History events the database refused, written again next cycle, in order.
    let mut history_backlog: std::collections::VecDeque<sekisho_monitor::HistoryEvent> =
        std::collections::VecDeque::new();
    // What the last run knew: the alerts firing and what each receiver was told, so that a
    // restart neither announces them again nor forgets a `resolved` (`restore.rs`).
    match history.restorable().await {
        Ok(alerts) => {
            if !alerts.is_empty() {
                tracing::info!(
                    alerts = alerts.len(),
                    "alert state of the last run restored"
                );
            }
            shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .restore(&alerts, std::time::Instant::now());
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the last run's alert state; alerts still firing will be announced again");
        }
    }
    // What notifications told receivers, written once their rows are in the outbox.
    let mut told_backlog: std::collections::VecDeque<sekisho_monitor::Told> =
        std::collections::VecDeque::new();
    let mut vitals = sekisho_monitor::Vitals::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the database refused, written again next cycle, in order, before anything newer.
    let mut backlog: std::collections::VecDeque<Delivery> = std::collections::VecDeque::new();
    loop {
        ticker.tick().await;
        let mut signals = sekisho_monitor::Signals::new();
        vitals.sample(&mut signals);
        gateway_signals(&gateway, &mut signals);
        let depth = probe_signals(&outbox, &data_dir, gateway.auth().is_some(), &mut signals).await;
        if let Some(certificate) = &certificate {
            let now = sekisho_db::now_millis() / 1000;
            if let Some(days) = sekisho_monitor::probes::tls_expiry_days(certificate, now) {
                signals.insert(
                    (
                        "tls_expiry_days".to_owned(),
                        gateway.config().server.listen.to_string(),
                    ),
                    days,
                );
            }
        }
        // Rules over metrics read the gateway's exposition (what `/metrics` serves), encoded
        // only when some rule watches a metric, and the monitor's own series after it.
        let watches_metrics = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .watches_metrics();
        let mut exposition = if watches_metrics {
            gateway.encode_metrics()
        } else {
            String::new()
        };
        let (due, happened) = {
            let mut monitor = shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(depth) = depth {
                monitor.note_queue(depth);
            }
            if watches_metrics {
                exposition.push_str(&sekisho_monitor::metrics::encode(
                    &monitor,
                    Some(&outbox),
                    false,
                ));
            }
            let due = monitor.cycle_with(&signals, &exposition, std::time::Instant::now());
            told_backlog.extend(monitor.take_told());
            (due, monitor.take_history())
        };
        history_backlog.extend(happened);
        while let Some(event) = history_backlog.front() {
            match history.record(event).await {
                Ok(()) => {
                    history_backlog.pop_front();
                }
                Err(error) => {
                    tracing::error!(%error, waiting = history_backlog.len(), "cannot write the alert history; keeping it in memory");
                    break;
                }
            }
        }
        while history_backlog.len() > BACKLOG {
            history_backlog.pop_front();
        }
        if last_purge.is_none_or(|at| at.elapsed() >= HISTORY_PURGE_EVERY) {
            last_purge = Some(std::time::Instant::now());
            match history
                .purge(history_retention, sekisho_db::now_millis())
                .await
            {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "old alert history removed"),
                Err(error) => tracing::warn!(%error, "cannot remove old alert history"),
            }
        }
        backlog.extend(due);
        while let Some(delivery) = backlog.front() {
            match outbox.enqueue(delivery).await {
                Ok(_) => {
                    backlog.pop_front();
                }
                Err(error) => {
                    tracing::error!(%error, waiting = backlog.len(), "cannot write notifications to the outbox; keeping them in memory");
                    break;
                }
            }
        }
        while backlog.len() > BACKLOG {
            if let Some(lost) = backlog.pop_front() {
                tracing::error!(receiver = %lost.receiver, group = %lost.group_key, "notification dropped: the outbox has been unwritable too long");
            }
        }
        // Only once every notification so far is a row: a kill before then repeats a
        // notification after the restart rather than losing it.
        while backlog.is_empty() {
            let Some(told) = told_backlog.front() else {
                break;
            };
            match history.record_told(told, sekisho_db::now_millis()).await {
                Ok(()) => {
                    told_backlog.pop_front();
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot record what receivers were told; retrying next cycle");
                    break;
                }
            }
        }
        while told_backlog.len() > BACKLOG {
            told_backlog.pop_front();
        }
    }
}

/// The probes with I/O, as signals of target `gateway`: the database's round trip, the disk
/// holding the data directory, the outbox's depth and oldest pending age, and (with `[auth]`)
/// failed logins in the last minute. Returns the outbox's depth, for the monitor's metrics.
async fn probe_signals(
    outbox: &Outbox,
    data_dir: &std::path::Path,
    auth: bool,
    signals: &mut sekisho_monitor::Signals,
) -> Option<sekisho_monitor::QueueDepth> {
    use sekisho_monitor::probes;
    let mut put = |name: &str, value: Option<f64>| {
        if let Some(value) = value {
            signals.insert((name.to_owned(), "gateway".to_owned()), value);
        }
    };
    let database = outbox.database();
    put(
        "database_rtt",
        probes::database_rtt(database, std::time::Duration::from_secs(5)).await,
    );
    put("disk", probes::disk_used(data_dir));
    // Monitoring the monitor: the outbox's depth and its oldest pending row's age.
    let depth = outbox.depth().await.ok();
    if let Some(depth) = depth {
        put("notifications_pending", Some(depth.pending as f64));
        let age = depth.oldest_created_at.map_or(0.0, |created| {
            sekisho_db::now_millis().saturating_sub(created) as f64 / 1000.0
        });
        put("notification_oldest_pending_seconds", Some(age));
    }
    if auth {
        put(
            "login_failures_per_minute",
            probes::login_failures_per_minute(database).await,
        );
    }
    depth
}

/// The gateway's own figures as signals: per upstream, whether no target is healthy, the
/// targets' mean error rate and their slowest smoothed latency (seconds, standing in for the
/// p95 until per-upstream histograms are kept), and whether its circuit is open.
fn gateway_signals(gateway: &Gateway, signals: &mut sekisho_monitor::Signals) {
    for upstream in gateway.upstreams() {
        let targets = &upstream.targets;
        let healthy = targets
            .iter()
            .filter(|t| t.health != "unhealthy" && t.eligible)
            .count();
        signals.insert(
            ("no_healthy_targets".to_owned(), upstream.name.clone()),
            if healthy == 0 { 1.0 } else { 0.0 },
        );
        if !targets.is_empty() {
            let errors = targets.iter().map(|t| t.error_rate).sum::<f64>() / targets.len() as f64;
            signals.insert(
                ("upstream_error_rate".to_owned(), upstream.name.clone()),
                errors,
            );
            let slowest = targets
                .iter()
                .map(|t| t.ewma_latency_ms)
                .fold(0.0, f64::max);
            signals.insert(
                ("upstream_latency_p95".to_owned(), upstream.name.clone()),
                slowest / 1000.0,
            );
        }
    }
    for circuit in gateway.circuits() {
        let open = matches!(circuit.state, "open" | "forced_open");
        signals.insert(
            ("circuit_open".to_owned(), circuit.name.clone()),
            if open { 1.0 } else { 0.0 },
        );
    }
}
