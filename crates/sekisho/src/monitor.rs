//! `run`'s alerting task: the gateway's figures and the host's vitals as signals (and its
//! metrics exposition, for rules over metrics), evaluated by
//! `sekisho-monitor`, each notification written to the outbox (whose worker sends it) and what
//! happened to each alert to the alert history.

use sekisho_gateway::Gateway;
use sekisho_monitor::series::Sample;
use sekisho_monitor::{Delivery, Outbox};

/// Notifications kept in memory while the database cannot take them, at most (the oldest are
/// dropped beyond, loudly).
const BACKLOG: usize = 10_000;
/// How often resolved alerts past `alerts.history_retention` are removed.
const HISTORY_PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Watches the gateway every `monitor.interval`: its upstreams, circuits and the host's vitals
/// as signals, the alert rules over them, each notification due written to `outbox`. A reload
/// that changes `[alerts]` applies its rules, timings and receivers at the next cycle (`config`
/// is the one the monitor in `shared` was made from).
pub(crate) async fn monitor(
    gateway: Gateway,
    mut config: std::sync::Arc<sekisho_config::Config>,
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
    // The silences in force when the last run stopped (an operator's silence outlives a restart).
    let now_ms = sekisho_db::now_millis();
    match history.active_silences(now_ms).await {
        Ok(silences) => {
            let now = std::time::Instant::now();
            let mut monitor = shared.lock().unwrap_or_else(|p| p.into_inner());
            for stored in &silences {
                let left = u64::try_from(stored.ends_at - now_ms).unwrap_or(0);
                monitor.manager().silence_with_id(
                    u64::try_from(stored.id).unwrap_or_default(),
                    sekisho_monitor::Silence {
                        matchers: stored.matchers.clone(),
                        until: now + std::time::Duration::from_millis(left),
                        comment: stored.comment.clone(),
                    },
                );
            }
            if !silences.is_empty() {
                tracing::info!(
                    silences = silences.len(),
                    "silences of the last run restored"
                );
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the silences of the last run; they are not in force");
        }
    }
    // What notifications told receivers, written once their rows are in the outbox.
    let mut told_backlog: std::collections::VecDeque<sekisho_monitor::Told> =
        std::collections::VecDeque::new();
    let mut vitals = sekisho_monitor::Vitals::default();
    let mut route_counts = RouteCounts::default();
    let mut latencies = UpstreamLatencies::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the database refused, written again next cycle, in order, before anything newer.
    let mut backlog: std::collections::VecDeque<Delivery> = std::collections::VecDeque::new();
    loop {
        ticker.tick().await;
        let now_config = gateway.config();
        if !std::sync::Arc::ptr_eq(&now_config, &config) {
            if now_config.alerts != config.alerts {
                let mut monitor = shared.lock().unwrap_or_else(|p| p.into_inner());
                monitor.reconfigure(&now_config.alerts);
                tracing::info!(
                    rules = ?monitor.rule_names(),
                    receivers = now_config.alerts.receivers.len(),
                    "alert rules and receivers of the reloaded config in force"
                );
            }
            config = now_config;
        }
        let mut signals = sekisho_monitor::Signals::new();
        vitals.sample(&mut signals);
        gateway_signals(&gateway, &mut signals);
        if let Some(rtt) = gateway.redis_rtt().await {
            signals.insert(
                ("redis_rtt".to_owned(), "gateway".to_owned()),
                rtt.as_secs_f64(),
            );
        }
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
        // The gateway's exposition (what `/metrics` serves): each route's share of 5xx answers
        // since the last cycle, and the rules over metrics, which also read the monitor's own
        // series after it.
        let watches_metrics = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .watches_metrics();
        let mut exposition = gateway.encode_metrics();
        // Parsed once for both readings of it.
        let samples = sekisho_monitor::series::parse_exposition(&exposition);
        route_counts.signals(&samples, &mut signals);
        latencies.signals(&samples, &mut signals);
        if !watches_metrics {
            exposition.clear();
        }
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
/// holding the data directory, the age of the last backup, the outbox's depth and oldest pending age, and (with `[auth]`)
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
    // Seconds since the last `sekisho backup` (or since the store was made, when never).
    put("backup_age", database.backup_age().await);
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

/// Each route's answers as last read from the exposition: (5xx, all).
#[derive(Debug, Default)]
struct RouteCounts(std::collections::HashMap<String, (f64, f64)>);

impl RouteCounts {
    /// `route_error_rate` of each route (its target): the share of 5xx among the answers
    /// since the last reading, 0 when it had none (so an alert resolves when traffic stops);
    /// nothing on the first reading or after a counter reset (a reload that dropped a route).
    fn signals(&mut self, samples: &[Sample], signals: &mut sekisho_monitor::Signals) {
        let mut now: std::collections::HashMap<String, (f64, f64)> =
            std::collections::HashMap::new();
        for sample in samples {
            if sample.name != "sekisho_requests_total" {
                continue;
            }
            let Some(route) = sample.labels.get("route") else {
                continue;
            };
            let counts = now.entry(route.clone()).or_default();
            counts.1 += sample.value;
            if sample.labels.get("class").map(String::as_str) == Some("5xx") {
                counts.0 += sample.value;
            }
        }
        for (route, &(errors, all)) in &now {
            let Some(&(errors_before, all_before)) = self.0.get(route) else {
                continue;
            };
            if errors < errors_before || all < all_before {
                continue;
            }
            let answered = all - all_before;
            let rate = if answered > 0.0 {
                (errors - errors_before) / answered
            } else {
                0.0
            };
            signals.insert(("route_error_rate".to_owned(), route.clone()), rate);
        }
        self.0 = now;
    }
}

/// Each upstream's `sekisho_request_duration_seconds` buckets (summed over its routes) as last
/// read from the exposition: (upper bound, cumulative count), by upper bound.
#[derive(Debug, Default)]
struct UpstreamLatencies(std::collections::HashMap<String, Vec<(f64, f64)>>);

impl UpstreamLatencies {
    /// `upstream_latency_p95` of each upstream (seconds): the 95th percentile of the answers
    /// since the last reading, interpolated within its bucket as Prometheus's
    /// `histogram_quantile` does; 0 when it had none (so an alert on it resolves when traffic
    /// stops). On the first reading, or after a reset, the targets' smoothed latency given by
    /// [`gateway_signals`] stands.
    fn signals(&mut self, samples: &[Sample], signals: &mut sekisho_monitor::Signals) {
        let mut now: std::collections::HashMap<String, Vec<(f64, f64)>> =
            std::collections::HashMap::new();
        for sample in samples {
            if sample.name != "sekisho_request_duration_seconds_bucket" {
                continue;
            }
            let (Some(upstream), Some(le)) =
                (sample.labels.get("upstream"), sample.labels.get("le"))
            else {
                continue;
            };
            let Ok(le) = le.parse::<f64>() else {
                continue;
            };
            if upstream.is_empty() {
                continue;
            }
            let buckets = now.entry(upstream.clone()).or_default();
            match buckets.iter_mut().find(|(bound, _)| *bound == le) {
                Some(bucket) => bucket.1 += sample.value,
                None => buckets.push((le, sample.value)),
            }
        }
        for (upstream, buckets) in &mut now {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let Some(before) = self.0.get(upstream) else {
                continue;
            };
            let delta: Option<Vec<(f64, f64)>> = buckets
                .iter()
                .map(|&(le, count)| {
                    let was = before
                        .iter()
                        .find(|(bound, _)| *bound == le)
                        .map_or(0.0, |b| b.1);
                    (count >= was).then_some((le, count - was))
                })
                .collect();
            let Some(delta) = delta else {
                continue; // a counter went back: no reading this time
            };
            signals.insert(
                ("upstream_latency_p95".to_owned(), upstream.clone()),
                quantile(0.95, &delta),
            );
        }
        self.0 = now;
    }
}

/// The `q` quantile of cumulative histogram `buckets` (ascending upper bounds, the last
/// `+Inf`), 0 when empty; within a bucket linearly interpolated, and the highest finite bound
/// when it falls in `+Inf`'s.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let within = count - lower.1;
            return if within > 0.0 {
                lower.0 + (bound - lower.0) * (rank - lower.1) / within
            } else {
                bound
            };
        }
        lower = (bound, count);
    }
    lower.0
}

/// The gateway's own figures as signals: per upstream, whether no target is healthy, the
/// targets' mean error rate and their slowest smoothed latency (seconds: `upstream_latency_p95`
/// until [`UpstreamLatencies`] has two readings of the duration histogram), and whether its
/// circuit is open.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(exposition: &str) -> Vec<Sample> {
        sekisho_monitor::series::parse_exposition(exposition)
    }

    fn exposition(orders: (u64, u64), catalog: u64) -> String {
        format!(
            "# TYPE sekisho_requests counter\n\
             sekisho_requests_total{{route=\"orders\",upstream=\"orders\",class=\"2xx\"}} {}\n\
             sekisho_requests_total{{route=\"orders\",upstream=\"orders\",class=\"5xx\"}} {}\n\
             sekisho_requests_total{{route=\"catalog\",upstream=\"catalog\",class=\"2xx\"}} {catalog}\n\
             sekisho_request_duration_seconds_count{{route=\"orders\"}} 999\n",
            orders.0, orders.1
        )
    }

    fn rate(signals: &sekisho_monitor::Signals, route: &str) -> Option<f64> {
        signals
            .get(&("route_error_rate".to_owned(), route.to_owned()))
            .copied()
    }

    fn buckets(upstream: &str, route: &str, counts: [u64; 4]) -> String {
        let les = ["0.1", "0.5", "1", "+Inf"];
        les.iter()
            .zip(counts)
            .map(|(le, n)| {
                format!(
                    "sekisho_request_duration_seconds_bucket{{route=\"{route}\",upstream=\"{upstream}\",le=\"{le}\"}} {n}\n"
                )
            })
            .collect()
    }

    fn p95(signals: &sekisho_monitor::Signals, upstream: &str) -> Option<f64> {
        signals
            .get(&("upstream_latency_p95".to_owned(), upstream.to_owned()))
            .copied()
    }

    #[test]
    fn upstream_latency_p95_comes_from_the_duration_histogram_since_the_last_reading() {
        let mut latencies = UpstreamLatencies::default();
        let mut signals = sekisho_monitor::Signals::new();
        let first = buckets("api", "a", [100, 100, 100, 100]) + &buckets("api", "b", [0, 0, 0, 0]);
        latencies.signals(&parse(&first), &mut signals);
        assert!(signals.is_empty(), "nothing before a second reading");
        // Since then, over both routes: 20 answers under 0.1 s, 60 in (0.1, 0.5], 20 in
        // (0.5, 1]: the 95th of 100 lies in the last bucket, three quarters in.
        let second =
            buckets("api", "a", [110, 140, 150, 150]) + &buckets("api", "b", [10, 40, 50, 50]);
        latencies.signals(&parse(&second), &mut signals);
        let value = p95(&signals, "api").unwrap_or(f64::NAN);
        assert!((value - 0.875).abs() < 1e-9, "{value}");
        // Slower than every bound: the highest finite one.
        let third =
            buckets("api", "a", [110, 140, 150, 160]) + &buckets("api", "b", [10, 40, 50, 50]);
        latencies.signals(&parse(&third), &mut signals);
        assert_eq!(p95(&signals, "api"), Some(1.0));
        // No answers since: 0.
        latencies.signals(&parse(&third), &mut signals);
        assert_eq!(p95(&signals, "api"), Some(0.0));
        // A reset (a reload that dropped the series): no reading this time.
        let mut signals = sekisho_monitor::Signals::new();
        latencies.signals(&parse(&first), &mut signals);
        assert_eq!(p95(&signals, "api"), None);
    }

    #[test]
    fn route_error_rate_is_the_share_of_5xx_since_the_last_reading() {
        let mut counts = RouteCounts::default();
        let mut signals = sekisho_monitor::Signals::new();
        counts.signals(&parse(&exposition((90, 10), 50)), &mut signals);
        assert!(signals.is_empty(), "nothing before a second reading");
        // Since then: orders 30 ok and 20 failed; catalog 10 ok.
        counts.signals(&parse(&exposition((120, 30), 60)), &mut signals);
        assert_eq!(rate(&signals, "orders"), Some(0.4));
        assert_eq!(rate(&signals, "catalog"), Some(0.0));
        // No answers since: 0, so an alert on it resolves.
        let mut signals = sekisho_monitor::Signals::new();
        counts.signals(&parse(&exposition((120, 30), 60)), &mut signals);
        assert_eq!(rate(&signals, "orders"), Some(0.0));
        // Counters that went back (a restart of the series): no reading this time.
        let mut signals = sekisho_monitor::Signals::new();
        counts.signals(&parse(&exposition((1, 1), 1)), &mut signals);
        assert_eq!(rate(&signals, "orders"), None);
    }
}
