//! Upstreams: groups of targets, their health, and the clients that reach them.
//!
//! Two lifetimes meet here. An [`UpstreamGroup`] belongs to one config generation: its targets,
//! balancer and settings as that config says. The state of a target — health, ejections, latency
//! estimate, requests in flight — belongs to the gateway: it lives in [`UpstreamStates`] (part of
//! the gateway's cross-reload registry), keyed by upstream name and target address, so that a
//! reload which keeps a target keeps what was learnt about it. Clients and their connection
//! pools likewise belong to the gateway ([`ClientCache`]).
//!
//! - [`client`]: how a target is reached (HTTP/1.1 pool or h2c client);
//! - [`state`]: what is learnt about each target, across reloads;
//! - [`eligible`]: which targets may take a request now, and the pick;
//! - [`outlier`]: each call's outcome recorded, and outlier ejection.
//!
//! Which targets may take a request is decided by a snapshot, rebuilt only when something
//! changed (a health transition, an ejection, an ejection or slow start running out), so a pick
//! costs an atomic load and a comparison before the balancer runs:
//!
//! 1. usable = healthy by the active checks and not ejected by outlier detection;
//! 2. the primaries that are usable, if at least `failover_threshold` of the primaries are;
//!    otherwise those plus the usable backups;
//! 3. none at all: `panic = "fail"` answers 503 NO_HEALTHY_UPSTREAM, `panic = "spread"` spreads
//!    over every target, ignoring health.

mod client;
mod eligible;
mod outlier;
mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use prometheus_client::metrics::counter::Counter;
use sekisho_config::{Balance, HashKey, PanicMode, Upstream, UpstreamProtocol};
use sekisho_policy::balance::{Algorithm, Balancer};
use sekisho_policy::breaker::{Breaker, BreakerConfig, Window};
use sekisho_policy::bulkhead::Bulkhead;
use tokio::time::Instant;

use crate::body::Held;
use crate::clock::Clock;
use crate::status_set::StatusSet;

pub(crate) use client::{ClientCache, TargetConn, UpstreamClient};
pub(crate) use outlier::CallOutcome;
pub use state::CheckRecord;
pub(crate) use state::{TargetState, UpstreamState, UpstreamStates};

use eligible::Snapshot;
use outlier::OutlierSettings;

/// One target of an upstream, in this generation.
#[derive(Debug)]
pub(crate) struct Target {
    /// As configured: "host:port".
    pub address: Arc<str>,
    /// How it is reached (its connection pool).
    pub conn: TargetConn,
    /// Relative share.
    pub weight: u32,
    /// Takes traffic only during failover.
    pub backup: bool,
    /// What is known about it (shared with other generations).
    pub state: Arc<TargetState>,
}

/// An upstream ready to serve.
#[derive(Debug)]
pub(crate) struct UpstreamGroup {
    /// The upstream's name.
    pub name: Arc<str>,
    /// Targets in config order.
    pub targets: Vec<Target>,
    /// The balancer.
    pub balancer: Balancer,
    /// The config's name of the algorithm.
    pub balance: Balance,
    /// Where `consistent_hash` and `ip_hash` find the request's key.
    pub hash_key: Option<HashKey>,
    state: Arc<UpstreamState>,
    clock: Clock,
    snapshot: ArcSwap<Snapshot>,
    /// Snapshots built so far (their ids).
    snapshots: AtomicU64,
    rebuilding: Mutex<()>,
    failover_threshold: f64,
    panic: PanicMode,
    slow_start: Duration,
    outlier: Option<OutlierSettings>,
    /// Protocol to the targets.
    pub protocol: UpstreamProtocol,
    /// Counts failed connects.
    pub connect_errors: Counter,
    /// The upstream's circuit breaker, and the statuses that count as its failures.
    pub circuit: Option<Circuit>,
    /// The upstream's bulkhead.
    pub bulkhead: Option<Arc<Bulkhead>>,
}

/// An upstream's circuit breaker as the proxy uses it.
#[derive(Debug)]
pub(crate) struct Circuit {
    /// The breaker (shared across reloads while its settings stay).
    pub breaker: Arc<Breaker>,
    /// Statuses that count as failures; timeouts, connect errors and broken answers always do.
    pub failure_statuses: StatusSet,
}

/// The breaker settings of `config`.
fn breaker_config(config: &sekisho_config::CircuitBreaker) -> BreakerConfig {
    let window = match config.window_calls {
        Some(calls) => Window::Calls(calls.0),
        None => {
            let window = config.window.get();
            let seconds = window.as_secs() + u64::from(window.subsec_nanos() > 0);
            Window::Time(u32::try_from(seconds).unwrap_or(u32::MAX).max(1))
        }
    };
    BreakerConfig {
        window,
        minimum_calls: config.minimum_calls.0,
        failure_rate_threshold: config.failure_rate_threshold.0,
        slow_call_threshold: config.slow_call_threshold.get(),
        slow_call_rate_threshold: config.slow_call_rate_threshold.0,
        open_for: config.open_for.get(),
        open_for_multiplier: config.open_for_multiplier,
        max_open_for: config.max_open_for.map(|d| d.get()),
        half_open_calls: config.half_open_calls.0,
        consecutive_failures: config.consecutive_failures.map(|n| n.0),
    }
}

/// Why no target could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoTarget;

impl UpstreamGroup {
    /// Builds the group; addresses were checked by the config.
    pub(crate) fn new(
        name: &str,
        upstream: &Upstream,
        client: UpstreamClient,
        connect_errors: Counter,
        registry: &UpstreamStates,
    ) -> Result<Self, String> {
        let configured = upstream.targets.get_ref();
        let addresses: Vec<&str> = configured.iter().map(|t| t.address.as_str()).collect();
        let (state, states) = registry.upstream(name, &addresses);
        let mut targets = Vec::with_capacity(configured.len());
        for (target, state) in configured.iter().zip(states) {
            let authority: Authority = target
                .address
                .parse()
                .map_err(|e| format!("target `{}`: {e}", target.address))?;
            targets.push(Target {
                address: Arc::from(target.address.as_str()),
                conn: client.for_target(&authority),
                weight: target.weight,
                backup: target.backup,
                state,
            });
        }
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let balancer = Balancer::new(algorithm_of(upstream.balance), &addresses, &weights);
        let hash_key = match upstream.balance {
            Balance::ConsistentHash => Some(upstream.hash_key.clone().unwrap_or(HashKey::ClientIp)),
            Balance::IpHash => Some(HashKey::ClientIp),
            _ => None,
        };
        let outlier = upstream.outlier.as_ref().map(|o| OutlierSettings {
            consecutive_failures: o.consecutive_failures.0,
            base_ejection: o.base_ejection_time.get(),
            max_ejection: o.max_ejection_time.get(),
            max_ejection_percent: o.max_ejection_percent.0,
            interval: o.interval.get(),
            failure_rate_margin: o.failure_rate_margin.0,
            minimum_requests: u64::from(o.failure_rate_minimum_requests.0),
            failure_on: o.failure_on.clone(),
        });
        let slow_start = upstream
            .slow_start
            .or_else(|| upstream.outlier.as_ref().map(|o| o.slow_start))
            .map_or(Duration::ZERO, |d| d.0);
        let circuit = upstream.circuit_breaker.as_ref().map(|config| Circuit {
            breaker: state.breaker(breaker_config(config)),
            failure_statuses: config.failure_statuses.iter().map(|s| s.0).collect(),
        });
        let bulkhead = upstream
            .bulkhead
            .as_ref()
            .map(|config| state.bulkhead(config));
        let group = Self {
            circuit,
            bulkhead,
            name: Arc::from(name),
            targets,
            balancer,
            balance: upstream.balance,
            hash_key,
            clock: registry.clock(),
            snapshot: ArcSwap::from_pointee(Snapshot::unbuilt()),
            state,
            snapshots: AtomicU64::new(0),
            rebuilding: Mutex::new(()),
            failover_threshold: upstream.failover_threshold.0,
            panic: upstream.panic,
            slow_start,
            outlier,
            protocol: upstream.protocol,
            connect_errors,
        };
        group.rebuild(group.clock.millis(Instant::now()));
        Ok(group)
    }

    /// The state shared across generations.
    pub(crate) fn state(&self) -> &Arc<UpstreamState> {
        &self.state
    }

    /// The clock of target state.
    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }

    /// A call to `target` begins: counted in flight until the returned hold is dropped.
    pub(crate) fn begin(&self, target: usize) -> Option<Held> {
        Some(self.targets.get(target)?.state.begin())
    }

    /// A snapshot of the targets for the admin API.
    pub(crate) fn view(&self) -> Vec<TargetFigures> {
        let now = Instant::now();
        let millis = self.clock.millis(now);
        let snapshot = self.current_snapshot(millis);
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ejected_until = t.state.ejected_until.load(Ordering::Relaxed);
                TargetFigures {
                    eligible: snapshot.mask.get(i).copied().unwrap_or(false),
                    healthy: t.state.is_healthy(),
                    ejected: ejected_until > millis,
                    ejected_for_ms: ejected_until.saturating_sub(millis),
                    in_flight: t.state.load.in_flight(),
                    latency_ms: t.state.load.latency(now.into_std()).as_secs_f64() * 1000.0,
                    error_rate: t.state.load.error_rate(),
                    ejections: t.state.ejections(),
                    picks: t.state.picks(),
                    last_check: t.state.last_check(),
                }
            })
            .collect()
    }
}

/// Live figures of one target, for the admin API and metrics.
#[derive(Debug, Clone)]
pub(crate) struct TargetFigures {
    /// May take requests now.
    pub eligible: bool,
    /// Passing the active checks.
    pub healthy: bool,
    /// Ejected by outlier detection.
    pub ejected: bool,
    /// Time left of the ejection.
    pub ejected_for_ms: u64,
    /// Requests in flight.
    pub in_flight: u32,
    /// Peak-EWMA latency estimate.
    pub latency_ms: f64,
    /// Recent error rate.
    pub error_rate: f64,
    /// Times ejected.
    pub ejections: u64,
    /// Times picked.
    pub picks: u64,
    /// The last active check.
    pub last_check: Option<CheckRecord>,
}

fn algorithm_of(balance: Balance) -> Algorithm {
    match balance {
        Balance::RoundRobin => Algorithm::RoundRobin,
        Balance::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        Balance::LeastConnections => Algorithm::LeastConnections,
        Balance::LeastResponseTime => Algorithm::LeastResponseTime,
        Balance::IpHash => Algorithm::IpHash,
        Balance::ConsistentHash => Algorithm::ConsistentHash,
        Balance::WeightedRandom => Algorithm::WeightedRandom,
    }
}

/// The name of `balance` as the config spells it.
pub(crate) fn balance_name(balance: Balance) -> &'static str {
    match balance {
        Balance::RoundRobin => "round_robin",
        Balance::WeightedRoundRobin => "weighted_round_robin",
        Balance::LeastConnections => "least_connections",
        Balance::LeastResponseTime => "least_response_time",
        Balance::IpHash => "ip_hash",
        Balance::ConsistentHash => "consistent_hash",
        Balance::WeightedRandom => "weighted_random",
    }
}
