//! The scrape-time collectors: figures read from the generation in force when `/metrics` is
//! scraped (targets, adaptive concurrency limits, bulkheads, circuit breakers) and from /proc
//! (the process), so the request path pays nothing for them.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::{names, AdaptiveLimits};
use crate::lag::SchedulingLag;
use crate::upstream::{TargetFigures, UpstreamGroup};

/// A metric name, its help, and how to read its sample from a row `R` (a target's figures, a
/// bulkhead's usage) as a constant gauge or counter.
type Reader<R, M> = (&'static str, &'static str, fn(&R) -> M);

/// A target's labels: its upstream and its address.
fn target_labels<'a>(
    (upstream, target, _): &(&'a str, &'a str, TargetFigures),
) -> [(&'static str, &'a str); 2] {
    [("upstream", upstream), ("target", target)]
}

/// The labels of a row named by its first field, under `name`.
fn labelled_by<'a, T>(
    name: &'static str,
) -> impl Fn(&(&'a str, T)) -> [(&'static str, &'a str); 1] + Copy {
    move |(value, _)| [(name, *value)]
}

/// One family of `kind` per reader, in order, each with one sample per row labelled by `labels`.
fn encode_rows<R, L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    kind: MetricType,
    rows: &[R],
    labels: impl Fn(&R) -> L,
    readers: &[Reader<R, M>],
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in readers {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for row in rows {
            value(row).encode(family.encode_family(&labels(row))?)?;
        }
    }
    Ok(())
}

/// Per-target figures read from the target states at scrape time, so the request path pays
/// nothing for them.
#[derive(Debug)]
pub(super) struct TargetCollector {
    pub(super) upstreams: Arc<ArcSwap<Vec<Arc<UpstreamGroup>>>>,
    pub(super) limits: Arc<ArcSwap<AdaptiveLimits>>,
}

impl Collector for TargetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let upstreams = self.upstreams.load();
        let figures: Vec<(&str, &str, TargetFigures)> = upstreams
            .iter()
            .flat_map(|group| {
                group
                    .targets
                    .iter()
                    .zip(group.view())
                    .map(|(target, figures)| (&*group.name, &*target.address, figures))
            })
            .collect();
        encode_circuits(&upstreams, &mut encoder)?;
        encode_bulkheads(&upstreams, &mut encoder)?;
        encode_adaptive_limits(&self.limits.load(), &mut encoder)?;
        if figures.is_empty() {
            return Ok(());
        }
        type Row<'a> = (&'a str, &'a str, TargetFigures);
        let gauges: [Reader<Row, ConstGauge<f64>>; 5] = [
            (
                names::TARGET_HEALTHY,
                "1 while the target passes its active health checks",
                |(_, _, f)| ConstGauge::new(f64::from(u8::from(f.healthy))),
            ),
            (
                names::TARGET_ELIGIBLE,
                "1 while the target may take requests",
                |(_, _, f)| ConstGauge::new(f64::from(u8::from(f.eligible))),
            ),
            (
                names::TARGET_EJECTED,
                "1 while the target is ejected by outlier detection",
                |(_, _, f)| ConstGauge::new(f64::from(u8::from(f.ejected))),
            ),
            (
                names::TARGET_IN_FLIGHT,
                "Requests in flight to the target",
                |(_, _, f)| ConstGauge::new(f64::from(f.in_flight)),
            ),
            (
                names::TARGET_LATENCY,
                "Peak-EWMA latency estimate of the target",
                |(_, _, f)| ConstGauge::new(f.latency_ms / 1000.0),
            ),
        ];
        encode_rows(
            &mut encoder,
            MetricType::Gauge,
            &figures,
            target_labels,
            &gauges,
        )?;
        let counters: [Reader<Row, ConstCounter<u64>>; 2] = [
            (
                names::TARGET_PICKS,
                "Times a balancer picked the target",
                |(_, _, f)| ConstCounter::new(f.picks),
            ),
            (
                names::TARGET_EJECTIONS,
                "Times the target was ejected by outlier detection",
                |(_, _, f)| ConstCounter::new(f.ejections),
            ),
        ];
        encode_rows(
            &mut encoder,
            MetricType::Counter,
            &figures,
            target_labels,
            &counters,
        )
    }
}

/// The routes' adaptive concurrency limits, read at scrape time.
fn encode_adaptive_limits(
    limits: &AdaptiveLimits,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    if limits.is_empty() {
        return Ok(());
    }
    type Row<'a> = (&'a str, sekisho_policy::concurrency::Usage);
    let usage: Vec<Row> = limits
        .iter()
        .map(|(route, limit)| (&**route, limit.usage()))
        .collect();
    let labels = labelled_by("route");
    let gauges: [Reader<Row, ConstGauge<i64>>; 2] = [
        (
            names::CONCURRENCY_LIMIT,
            "The route's adaptive concurrency limit now",
            |(_, u)| ConstGauge::new(i64::from(u.limit)),
        ),
        (
            names::CONCURRENCY_IN_FLIGHT,
            "Calls holding a place under the route's adaptive concurrency limit",
            |(_, u)| ConstGauge::new(i64::from(u.in_flight)),
        ),
    ];
    encode_rows(encoder, MetricType::Gauge, &usage, labels, &gauges)?;
    let shed: Reader<Row, ConstCounter<u64>> = (
        names::SHED,
        "Calls shed with OVERLOADED by the route's adaptive concurrency limit",
        |(_, u)| ConstCounter::new(u.shed),
    );
    encode_rows(encoder, MetricType::Counter, &usage, labels, &[shed])
}

/// The bulkheads' usage, read at scrape time.
fn encode_bulkheads(
    upstreams: &[Arc<UpstreamGroup>],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    type Row<'a> = (&'a str, sekisho_policy::bulkhead::Usage);
    let usage: Vec<Row> = upstreams
        .iter()
        .filter_map(|g| g.bulkhead.as_ref().map(|b| (&*g.name, b.usage())))
        .collect();
    if usage.is_empty() {
        return Ok(());
    }
    let labels = labelled_by("upstream");
    let gauges: [Reader<Row, ConstGauge<i64>>; 2] = [
        (
            names::BULKHEAD_IN_USE,
            "Slots of the upstream's bulkhead in use",
            |(_, u)| ConstGauge::new(i64::from(u.in_use)),
        ),
        (
            names::BULKHEAD_QUEUED,
            "Requests waiting for a slot of the upstream's bulkhead",
            |(_, u)| ConstGauge::new(i64::from(u.queued)),
        ),
    ];
    encode_rows(encoder, MetricType::Gauge, &usage, labels, &gauges)?;
    let rejected: Reader<Row, ConstCounter<u64>> = (
        names::BULKHEAD_REJECTED,
        "Requests refused with BULKHEAD_FULL by the upstream's bulkhead",
        |(_, u)| ConstCounter::new(u.rejected),
    );
    encode_rows(encoder, MetricType::Counter, &usage, labels, &[rejected])
}

/// The circuit breakers' figures, read at scrape time.
fn encode_circuits(
    upstreams: &[Arc<UpstreamGroup>],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use sekisho_policy::breaker::State;
    let now = tokio::time::Instant::now().into_std();
    type Row<'a> = (&'a str, sekisho_policy::breaker::Figures);
    let circuits: Vec<Row> = upstreams
        .iter()
        .filter_map(|g| {
            g.circuit
                .as_ref()
                .map(|c| (&*g.name, c.breaker.figures(now)))
        })
        .collect();
    if circuits.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(
        names::CIRCUIT_STATE,
        "1 for the state the upstream's circuit is in, 0 for the others",
        None,
        MetricType::Gauge,
    )?;
    for (upstream, figures) in &circuits {
        for state in [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::ForcedClosed,
            State::Disabled,
        ] {
            let labels = [("upstream", *upstream), ("state", state.name())];
            ConstGauge::new(i64::from(figures.state == state))
                .encode(family.encode_family(&labels)?)?;
        }
    }
    let labels = labelled_by("upstream");
    let opened: Reader<Row, ConstCounter<u64>> = (
        names::CIRCUIT_OPENED,
        "Times the upstream's circuit opened",
        |(_, figures)| ConstCounter::new(figures.opened),
    );
    encode_rows(encoder, MetricType::Counter, &circuits, labels, &[opened])?;
    let calls: Reader<Row, ConstGauge<i64>> = (
        names::CIRCUIT_CALLS,
        "Calls in the window of the upstream's circuit",
        |(_, figures)| ConstGauge::new(i64::from(figures.calls)),
    );
    encode_rows(encoder, MetricType::Gauge, &circuits, labels, &[calls])?;
    let failure_rate: Reader<Row, ConstGauge<f64>> = (
        names::CIRCUIT_FAILURE_RATE,
        "Failure rate of the window of the upstream's circuit",
        |(_, figures)| ConstGauge::new(figures.failure_rate),
    );
    encode_rows(
        encoder,
        MetricType::Gauge,
        &circuits,
        labels,
        &[failure_rate],
    )
}

/// Process vitals read from /proc at scrape time: CPU, memory, file descriptors, start time;
/// and the event loop's own delay.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector {
    pub(super) lag: Arc<SchedulingLag>,
}

impl ProcessCollector {
    fn read() -> Option<(f64, f64, f64, f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks_per_second = 100.0;
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let start_ticks: f64 = fields.get(19)?.parse().ok()?;
        let virtual_bytes: f64 = fields.get(20)?.parse().ok()?;
        let rss_pages: f64 = fields.get(21)?.parse().ok()?;
        let boot_time: f64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some((
            (utime + stime) / ticks_per_second,
            rss_pages * 4096.0,
            virtual_bytes,
            boot_time + start_ticks / ticks_per_second,
            std::fs::read_dir("/proc/self/fd").ok()?.count() as f64,
        ))
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let delay = ConstGauge::new(self.lag.worst().as_secs_f64());
        delay.encode(encoder.encode_descriptor(
            names::EVENT_LOOP_DELAY,
            "How long a ready task waits for the event loop, smoothed, the slowest loop with one per worker (0 while not probed: no adaptive limit, circuit breaker or overload bound configured)",
            None,
            delay.metric_type(),
        )?)?;
        let busy = ConstGauge::new(self.lag.busy_share());
        busy.encode(encoder.encode_descriptor(
            names::EVENT_LOOP_BUSY,
            "Share of the time the runtime's workers were busy, smoothed, averaged over the workers' loops (0 while not probed); from 0.9 a loop counts as saturated and its latencies as its own",
            None,
            busy.metric_type(),
        )?)?;
        // With more than one event loop, each one's figures (`worker_model = "per_worker"`).
        let loops = self.lag.per_loop();
        if loops.len() > 1 {
            type Row = (String, Duration, f64);
            let readers: [Reader<Row, ConstGauge<f64>>; 2] = [
                (
                    names::WORKER_LOOP_DELAY,
                    "How long a ready task waits for this worker's event loop, smoothed",
                    |(_, delay, _)| ConstGauge::new(delay.as_secs_f64()),
                ),
                (
                    names::WORKER_LOOP_BUSY,
                    "Share of the time this worker's event loop was busy, smoothed",
                    |(_, _, busy)| ConstGauge::new(*busy),
                ),
            ];
            encode_rows(
                &mut encoder,
                MetricType::Gauge,
                &loops,
                |(worker, _, _)| [("worker", worker.clone())],
                &readers,
            )?;
        }
        let Some((cpu, rss, virt, start, fds)) = Self::read() else {
            return Ok(());
        };
        let cpu_counter = ConstCounter::new(cpu);
        cpu_counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu_counter.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                virt,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch",
                start,
            ),
            ("process_open_fds", "Open file descriptors", fds),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Edge authentication's figures: live sessions and the identity cache's look-ups.
#[derive(Debug)]
pub(super) struct AuthCollector {
    pub(super) figures: Arc<sekisho_auth::AuthFigures>,
}

impl Collector for AuthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let sessions = self.figures.active_sessions.load(Relaxed);
        ConstGauge::new(sessions).encode(encoder.encode_descriptor(
            names::ACTIVE_SESSIONS,
            "Live sessions, as last counted (every 10 s)",
            None,
            MetricType::Gauge,
        )?)?;
        let dropped = self.figures.background_dropped.load(Relaxed);
        ConstCounter::new(dropped).encode(encoder.encode_descriptor(
            names::AUTH_BACKGROUND_DROPPED,
            "Audit rows, last logins and lockouts not written to the database: its queue was full (each event's audit log line was written)",
            None,
            MetricType::Counter,
        )?)?;
        let mut family = encoder.encode_descriptor(
            names::AUTH_CACHE_OPERATIONS,
            "Identity cache look-ups by tier (l1 in process, l2 Redis), cache and result",
            None,
            MetricType::Counter,
        )?;
        let figures = &self.figures;
        for (tier, cache, result, count) in [
            ("l1", "session", "hit", figures.cache_hits.load(Relaxed)),
            ("l1", "session", "miss", figures.cache_misses.load(Relaxed)),
            ("l1", "user_basic", "hit", figures.user_hits.load(Relaxed)),
            (
                "l1",
                "user_basic",
                "miss",
                figures.user_misses.load(Relaxed),
            ),
            (
                "l2",
                "user_permissions",
                "hit",
                figures.l2_hits.load(Relaxed),
            ),
            (
                "l2",
                "user_permissions",
                "miss",
                figures.l2_misses.load(Relaxed),
            ),
            (
                "l2",
                "role_definitions",
                "hit",
                figures.role_l2_hits.load(Relaxed),
            ),
            (
                "l2",
                "role_definitions",
                "miss",
                figures.role_l2_misses.load(Relaxed),
            ),
            (
                "l2",
                "session_data",
                "hit",
                figures.session_l2_hits.load(Relaxed),
            ),
            (
                "l2",
                "session_data",
                "miss",
                figures.session_l2_misses.load(Relaxed),
            ),
        ] {
            let labels = [("tier", tier), ("cache", cache), ("result", result)];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
