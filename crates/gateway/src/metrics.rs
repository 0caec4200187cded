//! Prometheus metrics: every name in one place, handles resolved once per route and upstream.
//!
//! A request never looks a metric up by its labels: each compiled route holds the counters and
//! histogram of its own label set, so the hot path is a few atomic adds. The registry is encoded
//! only when `/metrics` is scraped.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::upstream::{TargetFigures, UpstreamGroup};

/// Metric names, without the `_total` that counters get on exposition.
pub mod names {
    /// Requests answered, by route, upstream and status class.
    pub const REQUESTS: &str = "sekisho_requests";
    /// Time from the request head to the response head, by route and upstream.
    pub const REQUEST_DURATION: &str = "sekisho_request_duration_seconds";
    /// Requests between their head and the last byte of their response.
    pub const REQUESTS_IN_FLIGHT: &str = "sekisho_requests_in_flight";
    /// Client connections open now.
    pub const CONNECTIONS_OPEN: &str = "sekisho_connections_open";
    /// Client connections accepted.
    pub const CONNECTIONS: &str = "sekisho_connections";
    /// Connections closed because a request head took too long (slowloris).
    pub const HEADER_READ_TIMEOUTS: &str = "sekisho_header_read_timeouts";
    /// Failed connection attempts to targets, by upstream.
    pub const UPSTREAM_CONNECT_ERRORS: &str = "sekisho_upstream_connect_errors";
    /// Config reloads, by result.
    pub const CONFIG_RELOADS: &str = "sekisho_config_reloads";
    /// Unix time of the config now in force.
    pub const CONFIG_LOADED_TIMESTAMP: &str = "sekisho_config_loaded_timestamp_seconds";
    /// Active health checks, by upstream and result.
    pub const HEALTH_CHECKS: &str = "sekisho_health_checks";
    /// Retries made, by route and what failed (connect_error, timeout, status).
    pub const RETRIES: &str = "sekisho_retries";
    /// Retries refused because the route's retry budget was spent, by route.
    pub const RETRY_BUDGET_EXHAUSTED: &str = "sekisho_retry_budget_exhausted";
    /// Answers by a route's fallback, by route and kind (upstream or static).
    pub const FALLBACKS: &str = "sekisho_fallbacks";
    /// Per target (upstream, target): 1 while passing the active checks.
    pub const TARGET_HEALTHY: &str = "sekisho_upstream_target_healthy";
    /// Per target: 1 while it may take requests (healthy, not ejected, in the active group).
    pub const TARGET_ELIGIBLE: &str = "sekisho_upstream_target_eligible";
    /// Per target: 1 while ejected by outlier detection.
    pub const TARGET_EJECTED: &str = "sekisho_upstream_target_ejected";
    /// Per target: requests in flight.
    pub const TARGET_IN_FLIGHT: &str = "sekisho_upstream_target_in_flight";
    /// Per target: peak-EWMA latency estimate.
    pub const TARGET_LATENCY: &str = "sekisho_upstream_target_latency_seconds";
    /// Per target: times a balancer picked it.
    pub const TARGET_PICKS: &str = "sekisho_upstream_target_picks";
    /// Per target: times it was ejected.
    pub const TARGET_EJECTIONS: &str = "sekisho_upstream_target_ejections";
    /// Per upstream circuit: 1 for the state it is in (label `state`), 0 for the others.
    pub const CIRCUIT_STATE: &str = "sekisho_circuit_state";
    /// Per upstream circuit: times it opened.
    pub const CIRCUIT_OPENED: &str = "sekisho_circuit_opened";
    /// Per upstream circuit: calls in its window.
    pub const CIRCUIT_CALLS: &str = "sekisho_circuit_window_calls";
    /// Per upstream circuit: failure rate of its window.
    pub const CIRCUIT_FAILURE_RATE: &str = "sekisho_circuit_failure_rate";
    /// Per upstream bulkhead: slots in use.
    pub const BULKHEAD_IN_USE: &str = "sekisho_bulkhead_in_use";
    /// Per upstream bulkhead: requests waiting for a slot.
    pub const BULKHEAD_QUEUED: &str = "sekisho_bulkhead_queued";
    /// Per upstream bulkhead: requests refused with BULKHEAD_FULL.
    pub const BULKHEAD_REJECTED: &str = "sekisho_bulkhead_rejected";
    /// Rate-limit decisions, by route (`*`: the server-wide limit) and result.
    pub const RATE_LIMIT_DECISIONS: &str = "sekisho_rate_limit_decisions";
    /// Rate-limit decisions Redis could not make, by route.
    pub const RATE_LIMIT_STORE_ERRORS: &str = "sekisho_rate_limit_store_errors";
    /// Seconds per Redis rate-limit decision, by route.
    pub const RATE_LIMIT_STORE_SECONDS: &str = "sekisho_rate_limit_store_seconds";
    /// Cache lookups of cached routes, by route and result.
    pub const CACHE_LOOKUPS: &str = "sekisho_cache_lookups";
    /// Per route with adaptive concurrency: the current limit.
    pub const CONCURRENCY_LIMIT: &str = "sekisho_adaptive_concurrency_limit";
    /// Per route with adaptive concurrency: calls holding a place under the limit.
    pub const CONCURRENCY_IN_FLIGHT: &str = "sekisho_adaptive_concurrency_in_flight";
    /// Per route with adaptive concurrency: calls shed with OVERLOADED.
    pub const SHED: &str = "sekisho_shed";
}

/// Each route's adaptive concurrency limit, by route name.
type AdaptiveLimits = Vec<(Arc<str>, Arc<sekisho_policy::concurrency::AdaptiveLimit>)>;

type Labels = Vec<(&'static str, String)>;

/// Status classes, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Latency buckets in seconds: 0.5 ms to ~33 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17)
}

/// The gateway's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    upstream_connect_errors: Family<Labels, Counter>,
    config_reloads: Family<Labels, Counter>,
    health_checks: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    retry_budget_exhausted: Family<Labels, Counter>,
    fallbacks: Family<Labels, Counter>,
    rate_decisions: Family<Labels, Counter>,
    cache_lookups: Family<Labels, Counter>,
    rate_store_errors: Family<Labels, Counter>,
    rate_store_seconds: Family<Labels, Histogram>,
    upstreams: Arc<ArcSwap<Vec<Arc<UpstreamGroup>>>>,
    limits: Arc<ArcSwap<AdaptiveLimits>>,
    /// In flight now.
    pub requests_in_flight: Gauge,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// Client connections accepted.
    pub connections_total: Counter,
    /// Slowloris closes.
    pub header_read_timeouts: Counter,
    /// Unix time of the config in force.
    pub config_loaded_timestamp: Gauge,
}

/// The metric handles of one route.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// Counts one answered request.
    pub fn record(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            names::REQUESTS,
            "Requests answered, by route, upstream and status class",
            requests.clone(),
        );
        let durations =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            names::REQUEST_DURATION,
            "Time from request head to response head",
            durations.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            names::REQUESTS_IN_FLIGHT,
            "Requests between their head and the end of their response",
            requests_in_flight.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            names::CONNECTIONS_OPEN,
            "Client connections open now",
            connections_open.clone(),
        );
        let connections_total = Counter::default();
        registry.register(
            names::CONNECTIONS,
            "Client connections accepted",
            connections_total.clone(),
        );
        let header_read_timeouts = Counter::default();
        registry.register(
            names::HEADER_READ_TIMEOUTS,
            "Connections closed because a request head took longer than header_read_timeout",
            header_read_timeouts.clone(),
        );
        let upstream_connect_errors = Family::<Labels, Counter>::default();
        registry.register(
            names::UPSTREAM_CONNECT_ERRORS,
            "Failed connection attempts to targets, by upstream",
            upstream_connect_errors.clone(),
        );
        let config_reloads = Family::<Labels, Counter>::default();
        registry.register(
            names::CONFIG_RELOADS,
            "Config reloads, by result (ok or error)",
            config_reloads.clone(),
        );
        let config_loaded_timestamp = Gauge::default();
        registry.register(
            names::CONFIG_LOADED_TIMESTAMP,
            "Unix time at which the config now in force was loaded",
            config_loaded_timestamp.clone(),
        );
        let health_checks = Family::<Labels, Counter>::default();
        registry.register(
            names::HEALTH_CHECKS,
            "Active health checks, by upstream and result (ok or failed)",
            health_checks.clone(),
        );
        let retries = Family::<Labels, Counter>::default();
        registry.register(
            names::RETRIES,
            "Retries made, by route and what failed (connect_error, timeout, status)",
            retries.clone(),
        );
        let retry_budget_exhausted = Family::<Labels, Counter>::default();
        registry.register(
            names::RETRY_BUDGET_EXHAUSTED,
            "Retries refused because the route's retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        let fallbacks = Family::<Labels, Counter>::default();
        registry.register(
            names::FALLBACKS,
            "Answers by a route's fallback, by route and kind (upstream or static)",
            fallbacks.clone(),
        );
        let rate_decisions = Family::<Labels, Counter>::default();
        registry.register(
            names::RATE_LIMIT_DECISIONS,
            "Rate-limit decisions by route (* for the server-wide limit) and result (allowed, limited)",
            rate_decisions.clone(),
        );
        let rate_store_errors = Family::<Labels, Counter>::default();
        registry.register(
            names::RATE_LIMIT_STORE_ERRORS,
            "Rate-limit decisions Redis could not make (on_store_error decided), by route",
            rate_store_errors.clone(),
        );
        let rate_store_seconds = Family::<Labels, Histogram>::new_with_constructor(
            (|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.000_05, 2.0, 14,
                ))
            }) as fn() -> Histogram,
        );
        registry.register(
            names::RATE_LIMIT_STORE_SECONDS,
            "Seconds per Redis rate-limit decision, by route",
            rate_store_seconds.clone(),
        );
        let cache_lookups = Family::<Labels, Counter>::default();
        registry.register(
            names::CACHE_LOOKUPS,
            "Requests of cached routes, by route and result (hit, miss, stale, stale_if_error, coalesced, negative, bypass)",
            cache_lookups.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        let upstreams = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let limits = Arc::new(ArcSwap::from_pointee(Vec::new()));
        registry.register_collector(Box::new(TargetCollector {
            upstreams: Arc::clone(&upstreams),
            limits: Arc::clone(&limits),
        }));
        for result in ["ok", "error"] {
            let _ = config_reloads.get_or_create(&vec![("result", result.to_owned())]);
        }
        Arc::new(Self {
            registry,
            requests,
            durations,
            upstream_connect_errors,
            config_reloads,
            health_checks,
            retries,
            retry_budget_exhausted,
            fallbacks,
            rate_decisions,
            cache_lookups,
            rate_store_errors,
            rate_store_seconds,
            upstreams,
            limits,
            requests_in_flight,
            connections_open,
            connections_total,
            header_read_timeouts,
            config_loaded_timestamp,
        })
    }

    /// The handles of `route` → `upstream` (created on first use, then shared).
    pub fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        let by_class = CLASSES.map(|class| {
            self.requests
                .get_or_create(&vec![
                    ("route", route.to_owned()),
                    ("upstream", upstream.to_owned()),
                    ("class", class.to_owned()),
                ])
                .clone()
        });
        let duration = self
            .durations
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("upstream", upstream.to_owned()),
            ])
            .clone();
        RouteMetrics { by_class, duration }
    }

    /// The retry counters of `route`.
    pub fn route_retries(&self, route: &str) -> crate::retry::RetryMetrics {
        let reasons = ["connect_error", "timeout", "status"].map(|reason| {
            self.retries
                .get_or_create(&vec![
                    ("route", route.to_owned()),
                    ("reason", reason.to_owned()),
                ])
                .clone()
        });
        crate::retry::RetryMetrics {
            retries: reasons,
            budget_exhausted: self
                .retry_budget_exhausted
                .get_or_create(&vec![("route", route.to_owned())])
                .clone(),
        }
    }

    /// The fallback counters of `route`: [upstream, static].
    pub fn route_fallbacks(&self, route: &str) -> [Counter; 2] {
        ["upstream", "static"].map(|kind| {
            self.fallbacks
                .get_or_create(&vec![
                    ("route", route.to_owned()),
                    ("kind", kind.to_owned()),
                ])
                .clone()
        })
    }

    /// The connect-error counter of `upstream`.
    pub fn upstream_connect_errors(&self, upstream: &str) -> Counter {
        self.upstream_connect_errors
            .get_or_create(&vec![("upstream", upstream.to_owned())])
            .clone()
    }

    /// Counts an active health check of `upstream`.
    pub fn health_check(&self, upstream: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.health_checks
            .get_or_create(&vec![
                ("upstream", upstream.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    /// The handles of the rate limit of `scope` (a route's name, or `*`).
    pub fn rate_limit(&self, scope: &str) -> crate::ratelimit::LimitMetrics {
        let result = |result: &str| {
            self.rate_decisions
                .get_or_create(&vec![
                    ("route", scope.to_owned()),
                    ("result", result.to_owned()),
                ])
                .clone()
        };
        let route = vec![("route", scope.to_owned())];
        crate::ratelimit::LimitMetrics {
            allowed: result("allowed"),
            limited: result("limited"),
            store_errors: self.rate_store_errors.get_or_create(&route).clone(),
            store_latency: self.rate_store_seconds.get_or_create(&route).clone(),
        }
    }

    /// The cache counters of `route`.
    pub fn cache(&self, route: &str) -> crate::cache::CacheMetrics {
        let result = |result: &str| {
            self.cache_lookups
                .get_or_create(&vec![
                    ("route", route.to_owned()),
                    ("result", result.to_owned()),
                ])
                .clone()
        };
        crate::cache::CacheMetrics {
            hit: result("hit"),
            miss: result("miss"),
            stale: result("stale"),
            stale_if_error: result("stale_if_error"),
            coalesced: result("coalesced"),
            negative: result("negative"),
            bypass: result("bypass"),
        }
    }

    /// The upstreams whose targets the per-target metrics describe (those of the generation in
    /// force).
    pub fn set_upstreams(&self, groups: Vec<Arc<UpstreamGroup>>) {
        self.upstreams.store(Arc::new(groups));
    }

    /// The routes' adaptive concurrency limits the metrics describe (those of the generation in
    /// force).
    pub fn set_adaptive_limits(&self, limits: AdaptiveLimits) {
        self.limits.store(Arc::new(limits));
    }

    /// Counts a reload attempt.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// The Prometheus text format 0.0.4 (what `promtool check metrics` and every scraper read).
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }

    /// The OpenMetrics text exposition.
    pub fn encode_openmetrics(&self) -> String {
        let mut text = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// OpenMetrics names a counter family `x` and its sample `x_total`; the Prometheus text format
/// names both `x_total`, and has no `# UNIT` or `# EOF` lines.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

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
struct TargetCollector {
    upstreams: Arc<ArcSwap<Vec<Arc<UpstreamGroup>>>>,
    limits: Arc<ArcSwap<AdaptiveLimits>>,
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
    let now = std::time::Instant::now();
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

/// Process vitals read from /proc at scrape time: CPU, memory, file descriptors, start time.
#[derive(Debug, Default)]
struct ProcessCollector;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_for_the_prometheus_format() {
        let open = "# HELP a_things Things.\n# TYPE a_things counter\n# UNIT a_things things\na_things_total 3\n# TYPE b gauge\nb 1\n# EOF\n";
        let text = openmetrics_to_prometheus(open);
        assert_eq!(
            text,
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total 3\n# TYPE b gauge\nb 1\n"
        );
    }
}
