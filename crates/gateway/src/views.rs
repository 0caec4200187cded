//! The admin read side: what `sekisho-admin` reads of a running gateway through [`Gateway`]
//! (readiness, upstreams and targets, circuits, rate limits, the response cache, the metrics
//! exposition) as owned views, and the few operator actions it may take (circuit actions, cache
//! purge). Every view is a copy taken when asked for; the admin side keeps no reference into the
//! generation in force.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use crate::clock::unix_ms;
use crate::state::ReloadRecord;
use crate::{cache, ratelimit, store_link, upstream, Gateway};

/// Readiness and config status, for `/ready` and `/health/detailed`.
#[derive(Debug, Clone)]
pub struct Status {
    /// The listener is bound, not draining, and a Redis the config names has been tried once.
    pub ready: bool,
    /// Shutting down.
    pub draining: bool,
    /// The first attempt to connect to the config's Redis has not ended yet.
    pub store_connecting: bool,
    /// Config generation in force.
    pub generation: u64,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// The last reload attempt.
    pub last_reload: ReloadRecord,
}

/// Why a cache purge did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PurgeError {
    /// No route caches anything.
    #[error("no route has a cache")]
    NoCache,
    /// This instance's copies are gone, but Redis (the shared tier, or the message to the other
    /// instances) failed.
    #[error("purged in this instance, but not through redis: {0}")]
    Shared(String),
}

/// An upstream as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamView {
    /// Its name.
    pub name: String,
    /// Balancing algorithm in force.
    pub balance: &'static str,
    /// No target is usable and `panic = "spread"` spreads over all of them.
    pub panic: bool,
    /// The bulkhead's usage, when the upstream has one.
    pub bulkhead: Option<BulkheadView>,
    /// Its targets.
    pub targets: Vec<TargetView>,
}

/// A bulkhead's usage as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BulkheadView {
    /// Slots in use.
    pub in_use: u32,
    /// Requests waiting for a slot.
    pub queued: u32,
    /// The limit.
    pub max_concurrent: u32,
    /// Requests refused with BULKHEAD_FULL so far.
    pub rejected: u64,
}

/// A target as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetView {
    /// "host:port".
    pub address: String,
    /// Relative share.
    pub weight: u32,
    /// Failover-only target.
    pub backup: bool,
    /// "healthy", "unhealthy" (failing its active checks) or "ejected" (outlier detection).
    pub health: &'static str,
    /// May take requests now (healthy, not ejected, in the active priority group).
    pub eligible: bool,
    /// Requests in flight.
    pub in_flight: u32,
    /// Peak-EWMA latency estimate, in milliseconds.
    pub ewma_latency_ms: f64,
    /// Recent share of failed requests.
    pub error_rate: f64,
    /// Times ejected by outlier detection.
    pub ejections: u64,
    /// Time left of the current ejection, in milliseconds (0 when not ejected).
    pub ejected_for_ms: u64,
    /// Times a balancer picked it.
    pub picks: u64,
    /// The last active health check, if the upstream has them.
    pub last_check: Option<upstream::CheckRecord>,
    /// Open keep-alive connections waiting in its pool (HTTP/1.1 targets; none for h2c).
    pub idle_connections: Option<usize>,
}

/// A route as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteView {
    /// Its name.
    pub name: String,
    /// The upstream it sends to.
    pub upstream: String,
    /// `prefix` or `exact`.
    pub path_match: &'static str,
    /// The path (or prefix) it takes.
    pub path: String,
    /// The methods it takes; `None`: any.
    pub methods: Option<Vec<String>>,
    /// The deadline of a whole request, every attempt included, in milliseconds.
    pub timeout_ms: u64,
    /// Retries and their budget, when `[routes.retry]` is set.
    pub retry: Option<RetryView>,
    /// `[routes.rate_limit]` is set.
    pub rate_limit: bool,
    /// `[routes.cache]` is set.
    pub cache: bool,
    /// `[routes.fallback]` is set.
    pub fallback: bool,
    /// Shedding by an adaptive concurrency limit is on.
    pub adaptive_concurrency: bool,
}

/// A route's retries as the admin API shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetryView {
    /// Attempts at most, the first included.
    pub attempts: u32,
    /// The retry budget now, over its window (the last 10 s).
    pub budget: RetryBudgetView,
}

/// A retry budget's figures now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetryBudgetView {
    /// First attempts in the window.
    pub requests: u64,
    /// Retries in the window.
    pub retries: u64,
    /// Retries still allowed now; 0: the next failure is answered as it is.
    pub available: u64,
}

/// A circuit breaker as the admin API shows it (named after its upstream).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CircuitView {
    /// The upstream's name.
    pub name: String,
    /// `closed`, `open`, `half_open`, `forced_open`, `forced_closed` or `disabled`.
    pub state: &'static str,
    /// Failure rate of the calls in the window.
    pub failure_rate: f64,
    /// Slow-call rate of the calls in the window.
    pub slow_call_rate: f64,
    /// Calls in the window.
    pub calls: u32,
    /// Failed calls in the window.
    pub failures: u32,
    /// Slow calls in the window.
    pub slow_calls: u32,
    /// Times it opened.
    pub opened: u64,
    /// The last transitions, oldest first.
    pub transitions: Vec<TransitionView>,
}

/// One change of a circuit's state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransitionView {
    /// From.
    pub from: &'static str,
    /// To.
    pub to: &'static str,
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
}

/// Why an operator's circuit action was refused.
#[derive(Debug, thiserror::Error)]
pub enum CircuitActionError {
    /// No upstream of that name has a circuit breaker.
    #[error("no circuit named `{0}`")]
    UnknownCircuit(String),
    /// Not one of force_open, force_closed, disable, reset.
    #[error("unknown action `{0}`: expected force_open, force_closed, disable or reset")]
    UnknownAction(String),
}

impl Gateway {
    /// Readiness and reload status.
    pub fn status(&self) -> Status {
        let runtime = self.shared.runtime.load();
        let draining = self.shared.draining.load(Ordering::Acquire);
        // Not ready until a Redis the config names has been tried once (connected or refused,
        // within the connect timeout): a load balancer then sends no traffic that would be
        // decided by `on_store_error` only because the link was still opening.
        let store_connecting = !self.shared.states.store_attempted();
        Status {
            ready: self.shared.serving.load(Ordering::Acquire) && !draining && !store_connecting,
            draining,
            store_connecting,
            generation: runtime.generation,
            loaded_at: runtime.loaded_at,
            last_reload: self
                .shared
                .reload_lock
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default(),
        }
    }

    /// Upstreams and targets in force.
    pub fn upstreams(&self) -> Vec<UpstreamView> {
        let runtime = self.shared.runtime.load();
        runtime
            .upstreams
            .values()
            .map(|group| UpstreamView {
                name: group.name.to_string(),
                balance: upstream::balance_name(group.balance),
                panic: group.is_panicking(),
                bulkhead: group.bulkhead.as_ref().map(|b| {
                    let usage = b.usage();
                    BulkheadView {
                        in_use: usage.in_use,
                        queued: usage.queued,
                        max_concurrent: usage.max_concurrent,
                        rejected: usage.rejected,
                    }
                }),
                targets: group
                    .targets
                    .iter()
                    .zip(group.view())
                    .map(|(t, f)| TargetView {
                        address: t.address.to_string(),
                        weight: t.weight,
                        backup: t.backup,
                        health: if f.ejected {
                            "ejected"
                        } else if f.healthy {
                            "healthy"
                        } else {
                            "unhealthy"
                        },
                        eligible: f.eligible,
                        in_flight: f.in_flight,
                        ewma_latency_ms: f.latency_ms,
                        error_rate: f.error_rate,
                        ejections: f.ejections,
                        ejected_for_ms: f.ejected_for_ms,
                        picks: f.picks,
                        last_check: f.last_check,
                        idle_connections: t.conn.idle(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The response cache's figures and its first `keys` keys, when a route caches.
    pub fn cache_stats(&self, keys: usize) -> Option<(cache::CacheStats, Vec<String>)> {
        let cache = self.shared.states.cache()?;
        Some((cache.stats(), cache.keys(keys)))
    }

    /// Purges the response cache here, in Redis, and (through Redis) on every other instance.
    /// Returns the entries deleted from Redis.
    pub async fn cache_purge(&self, purge: &cache::Purge) -> Result<u64, PurgeError> {
        match self.shared.states.cache() {
            Some(cache) => cache.purge(purge).await.map_err(PurgeError::Shared),
            None => Err(PurgeError::NoCache),
        }
    }

    /// Every rate limit in force: the server's, then each route's.
    pub fn rate_limits(&self) -> Vec<ratelimit::RateLimitView> {
        let runtime = self.shared.runtime.load();
        runtime.rate_limits().map(|limit| limit.view()).collect()
    }

    /// What `key` has left under the rate limit of `scope` (`*` or a route), or `None` for a
    /// scope without a limit.
    pub async fn rate_limit_usage(
        &self,
        scope: &str,
        key: &str,
    ) -> Option<sekisho_policy::ratelimit::Decision> {
        let runtime = self.shared.runtime.load_full();
        let limit = runtime.rate_limits().find(|limit| limit.scope() == scope)?;
        Some(limit.usage(key).await)
    }

    /// The Redis link of rate limits, when one uses it.
    pub fn store_status(&self) -> Option<store_link::StoreStatus> {
        self.shared.states.store_status()
    }

    /// One round trip to the Redis the gateway uses (a `PING`, within its cache timeout);
    /// nothing without `store.redis` in use, before it is connected, or when it does not answer.
    pub async fn redis_rtt(&self) -> Option<std::time::Duration> {
        let cache = self.shared.states.current_store_link()?.redis_cache()?;
        cache.ping().await.ok()
    }

    /// The routes in force, in the order they are matched, with each retry budget's figures.
    pub fn routes(&self) -> Vec<RouteView> {
        let runtime = self.shared.runtime.load();
        let now = tokio::time::Instant::now();
        runtime
            .router
            .routes()
            .iter()
            .map(|route| {
                let (path_match, path) = route.path_view();
                RouteView {
                    name: route.name.to_string(),
                    upstream: route.upstream.name.to_string(),
                    path_match,
                    path: path.to_owned(),
                    methods: route.methods_view(),
                    timeout_ms: u64::try_from(route.timeout.as_millis()).unwrap_or(u64::MAX),
                    retry: route.retry.as_ref().map(|retry| {
                        let figures = retry.budget_figures(now);
                        RetryView {
                            attempts: retry.attempts,
                            budget: RetryBudgetView {
                                requests: figures.requests,
                                retries: figures.retries,
                                available: figures.available,
                            },
                        }
                    }),
                    rate_limit: route.rate_limit.is_some(),
                    cache: route.cache.is_some(),
                    fallback: route.fallback.is_some(),
                    adaptive_concurrency: route.concurrency.is_some(),
                }
            })
            .collect()
    }

    /// Every circuit breaker in force, by upstream name.
    pub fn circuits(&self) -> Vec<CircuitView> {
        let runtime = self.shared.runtime.load();
        runtime
            .upstreams
            .values()
            .filter_map(|group| group.circuit.as_ref().map(|c| circuit_view(&group.name, c)))
            .collect()
    }

    /// An operator's action on the circuit of upstream `name`: `force_open`, `force_closed`,
    /// `disable` or `reset`.
    pub fn circuit_action(
        &self,
        name: &str,
        action: &str,
    ) -> Result<CircuitView, CircuitActionError> {
        let runtime = self.shared.runtime.load();
        let circuit = runtime
            .upstreams
            .get(name)
            .and_then(|group| group.circuit.as_ref())
            .ok_or_else(|| CircuitActionError::UnknownCircuit(name.to_owned()))?;
        let now = tokio::time::Instant::now().into_std();
        match action {
            "force_open" => circuit.breaker.force_open(now),
            "force_closed" => circuit.breaker.force_closed(now),
            "disable" => circuit.breaker.disable(now),
            "reset" => circuit.breaker.reset(now),
            other => return Err(CircuitActionError::UnknownAction(other.to_owned())),
        }
        tracing::warn!(circuit = name, action, "circuit changed by an operator");
        Ok(circuit_view(name, circuit))
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode_metrics(&self) -> String {
        self.shared.metrics.encode_prometheus()
    }

    /// The OpenMetrics text exposition.
    pub fn encode_openmetrics(&self) -> String {
        self.shared.metrics.encode_openmetrics()
    }
}

fn circuit_view(name: &str, circuit: &upstream::Circuit) -> CircuitView {
    let now = tokio::time::Instant::now().into_std();
    let wall = SystemTime::now();
    let figures = circuit.breaker.figures(now);
    let transitions = circuit
        .breaker
        .transitions()
        .into_iter()
        .map(|t| TransitionView {
            from: t.from.name(),
            to: t.to.name(),
            at_unix_ms: unix_ms(wall - now.saturating_duration_since(t.at)),
        })
        .collect();
    CircuitView {
        name: name.to_owned(),
        state: figures.state.name(),
        failure_rate: figures.failure_rate,
        slow_call_rate: figures.slow_rate,
        calls: figures.calls,
        failures: figures.failures,
        slow_calls: figures.slow,
        opened: figures.opened,
        transitions,
    }
}
