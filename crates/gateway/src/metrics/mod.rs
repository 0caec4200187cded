//! Prometheus metrics: every name in one place, handles resolved once per route and upstream.
//!
//! A request never looks a metric up by its labels: each compiled route holds the counters and
//! histogram of its own label set, so the hot path is a few atomic adds. The registry is encoded
//! only when `/metrics` is scraped.

mod collect;
pub(crate) mod names;

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::upstream::UpstreamGroup;
use collect::{AuthCollector, ProcessCollector, TargetCollector};

use crate::lag::SchedulingLag;

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
pub(crate) struct Metrics {
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
    rate_known_over: Family<Labels, Counter>,
    worker_connections: Family<Labels, Counter>,
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
    /// Requests refused while the gateway itself was overloaded.
    pub overload_refused: Counter,
    /// Refusals decided from the request's head alone (`proxy::early`).
    pub refused_from_head: Counter,
    /// Unix time of the config in force.
    pub config_loaded_timestamp: Gauge,
    auth_requests: Family<Labels, Counter>,
    auth_durations: Family<Labels, Histogram>,
    /// The handles of a session validated on a route (every authenticated request), made once.
    validated: Option<(Counter, Histogram)>,
}

/// The metric handles of one route.
#[derive(Debug, Clone)]
pub(crate) struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// Counts one answered request.
    pub(crate) fn record(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }
}

impl Metrics {
    /// Registers every metric.
    pub(crate) fn new(
        lag: &Arc<SchedulingLag>,
        auth: Option<Arc<sekisho_auth::AuthFigures>>,
    ) -> Arc<Self> {
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
        let worker_connections = Family::<Labels, Counter>::default();
        registry.register(
            names::WORKER_CONNECTIONS,
            "Client connections served, by the worker whose event loop serves them (worker_model = \"per_worker\"; a connection goes to the loop with the fewest open)",
            worker_connections.clone(),
        );
        let overload_refused = Counter::default();
        registry.register(
            names::OVERLOAD_REFUSED,
            "Requests refused with OVERLOADED before routing because the gateway's own event loop ran further behind than server.overload.max_loop_delay",
            overload_refused.clone(),
        );
        let refused_from_head = Counter::default();
        registry.register(
            names::REFUSED_FROM_HEAD,
            "Refusals (the gateway overloaded, a route's adaptive limit full) decided from the request's head alone and written before a request was built: the cheap way, taken on HTTP/1.1 when no step before the refusal could answer otherwise",
            refused_from_head.clone(),
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
        let rate_known_over = Family::<Labels, Counter>::default();
        registry.register(
            names::RATE_LIMIT_KNOWN_OVER,
            "Refusals of a Redis-decided limit made in process, without asking Redis, for a key Redis had refused until then, by route",
            rate_known_over.clone(),
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
            "Requests of cached routes, by route and result (hit, miss, stale, stale_if_error, coalesced, negative, bypass, revalidated)",
            cache_lookups.clone(),
        );
        let auth_requests = Family::<Labels, Counter>::default();
        registry.register(
            names::AUTH_REQUESTS,
            "Auth operations (login, refresh, logout, me, validate), by status and error type",
            auth_requests.clone(),
        );
        let auth_durations = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])) as fn() -> Histogram,
        );
        registry.register(
            names::AUTH_DURATION,
            "Seconds per auth operation, by operation",
            auth_durations.clone(),
        );
        let validated = auth.as_ref().map(|_| {
            let ok = auth_requests
                .get_or_create(&vec![
                    ("status", "200".to_owned()),
                    ("error_type", "none".to_owned()),
                ])
                .clone();
            let took = auth_durations
                .get_or_create(&vec![("operation", "validate".to_owned())])
                .clone();
            (ok, took)
        });
        if let Some(figures) = auth {
            // A login's steps, in the same histogram by operation (`get_user`,
            // `verify_password`, `create_session`).
            let steps = ["get_user", "verify_password", "create_session"].map(|step| {
                auth_durations
                    .get_or_create(&vec![("operation", step.to_owned())])
                    .clone()
            });
            figures.steps.set(move |step, took| {
                let index = match step {
                    "get_user" => 0,
                    "verify_password" => 1,
                    _ => 2,
                };
                steps[index].observe(took.as_secs_f64());
            });
            registry.register_collector(Box::new(AuthCollector { figures }));
        }
        registry.register_collector(Box::new(ProcessCollector {
            lag: Arc::clone(lag),
        }));
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
            rate_known_over,
            worker_connections,
            rate_store_seconds,
            upstreams,
            limits,
            requests_in_flight,
            connections_open,
            connections_total,
            header_read_timeouts,
            overload_refused,
            refused_from_head,
            config_loaded_timestamp,
            auth_requests,
            auth_durations,
            validated,
        })
    }

    /// Counts one auth operation and its time: `status` is the answer's (200 for a session
    /// validated on a route), `error_type` the contract code of a refusal or `none`. A session
    /// validated from the in-process cache has no time (about a microsecond, far below the
    /// first bucket, and not worth two clock reads per request): it is counted, not observed.
    pub(crate) fn record_auth(
        &self,
        operation: &str,
        status: u16,
        error_type: &str,
        seconds: Option<f64>,
    ) {
        if let (Some((ok, took)), "validate", 200) = (&self.validated, operation, status) {
            ok.inc();
            if let Some(seconds) = seconds {
                took.observe(seconds);
            }
            return;
        }
        self.auth_requests
            .get_or_create(&vec![
                ("status", status.to_string()),
                ("error_type", error_type.to_owned()),
            ])
            .inc();
        if let Some(seconds) = seconds {
            self.auth_durations
                .get_or_create(&vec![("operation", operation.to_owned())])
                .observe(seconds);
        }
    }

    /// The handles of `route` → `upstream` (created on first use, then shared).
    /// The count of connections served by worker `index`'s event loop, resolved once by it.
    pub(crate) fn worker_connections(&self, index: usize) -> Counter {
        self.worker_connections
            .get_or_create(&vec![("worker", index.to_string())])
            .clone()
    }

    pub(crate) fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
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
    pub(crate) fn route_retries(&self, route: &str) -> crate::retry::RetryMetrics {
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
    pub(crate) fn route_fallbacks(&self, route: &str) -> [Counter; 2] {
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
    pub(crate) fn upstream_connect_errors(&self, upstream: &str) -> Counter {
        self.upstream_connect_errors
            .get_or_create(&vec![("upstream", upstream.to_owned())])
            .clone()
    }

    /// Counts an active health check of `upstream`.
    pub(crate) fn health_check(&self, upstream: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.health_checks
            .get_or_create(&vec![
                ("upstream", upstream.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    /// The handles of the rate limit of `scope` (a route's name, or `*`).
    pub(crate) fn rate_limit(&self, scope: &str) -> crate::ratelimit::LimitMetrics {
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
            known_over: self.rate_known_over.get_or_create(&route).clone(),
        }
    }

    /// The cache counters of `route`.
    pub(crate) fn cache(&self, route: &str) -> crate::cache::CacheMetrics {
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
            revalidated: result("revalidated"),
        }
    }

    /// The upstreams whose targets the per-target metrics describe (those of the generation in
    /// force).
    pub(crate) fn set_upstreams(&self, groups: Vec<Arc<UpstreamGroup>>) {
        self.upstreams.store(Arc::new(groups));
    }

    /// The routes' adaptive concurrency limits the metrics describe (those of the generation in
    /// force).
    pub(crate) fn set_adaptive_limits(&self, limits: AdaptiveLimits) {
        self.limits.store(Arc::new(limits));
    }

    /// Counts a reload attempt.
    pub(crate) fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// The Prometheus text format 0.0.4 (what `promtool check metrics` and every scraper read).
    pub(crate) fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn encode_openmetrics(&self) -> String {
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
