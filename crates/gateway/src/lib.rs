//! sekisho-gateway: the data plane.
//!
//! What it is for: accepting client connections (HTTP/1.1, HTTP/2, TLS), routing each request,
//! forwarding it to a target over a pooled connection with deadlines and limits, streaming the
//! answer back, and turning every failure into the contract's JSON at one edge ([`edge`]). It
//! also owns the live config ([`Gateway::reload`]) and the metrics registry.
//!
//! What it refuses to do: buffer bodies whole, block the reactor, panic on a request path, or
//! serve the admin API (that is `sekisho-admin`, which reads the gateway through [`Gateway`]).

// Modules from the lowest to the highest: each imports only modules above it in this list
// (ARCHITECTURE.md, "Module layers"; tests/layers.rs keeps it so).
pub mod body;
mod build_error;
pub mod cache;
mod client_ip;
mod clock;
mod connection;
pub mod edge;
pub mod fallback;
mod health;
pub mod metrics;
pub mod pool;
mod proxy;
pub mod ratelimit;
mod registry;
pub mod request_id;
pub mod retry;
pub mod router;
mod runtime;
mod server;
mod store_link;
mod sync;
mod tls;
pub mod upstream;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use sekisho_config::{Config, ConfigError};

pub use proxy::ClientInfo;
pub use request_id::{new_request_id, X_REQUEST_ID};
pub use runtime::{BuildError, ListenerSettings, Runtime};
pub use server::TrafficListener;

use metrics::{Metrics, RouteMetrics};
use registry::StateRegistry;
use upstream::ClientCache;

/// State shared by every connection and the admin side.
pub(crate) struct Shared {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    clients: ClientCache,
    states: StateRegistry,
    health: health::Supervisor,
    config_path: Option<PathBuf>,
    unrouted_metrics: RouteMetrics,
    draining: AtomicBool,
    serving: AtomicBool,
    generation: AtomicU64,
    reload_lock: Mutex<ReloadRecord>,
    /// The config file's bytes as the last reload (or the watcher's first look) read them, so
    /// the file watch compares against what was last loaded, whoever loaded it.
    file_bytes: Mutex<Option<Vec<u8>>>,
}

/// The last reload attempt and its result.
#[derive(Debug, Clone, Default)]
pub struct ReloadRecord {
    /// When it was tried.
    pub at: Option<SystemTime>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// Why a reload was refused; the config in force stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The new config is valid but could not be put in force (e.g. an unreadable certificate).
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The gateway was started without a config file.
    #[error("the gateway was started without a config file")]
    NoFile,
}

/// What a successful reload changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadSummary {
    /// The generation now in force.
    pub generation: u64,
    /// One line on the new config.
    pub summary: String,
    /// Settings that changed but need a restart to take effect.
    pub needs_restart: Vec<String>,
}

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

/// A handle on a running gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field(
                "generation",
                &self.shared.generation.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Gateway {
    /// Compiles `config`; `config_path` is the file reloads read again.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Self, BuildError> {
        let metrics = Metrics::new();
        let clients = ClientCache::default();
        let states = StateRegistry::default();
        let base_dir = config_path.as_deref().and_then(Path::parent);
        let runtime = Runtime::build(Arc::new(config), base_dir, &clients, &states, &metrics, 1)?;
        metrics.set_upstreams(runtime.upstreams.values().cloned().collect());
        metrics.set_adaptive_limits(runtime.adaptive_limits());
        metrics
            .config_loaded_timestamp
            .set(unix_seconds(runtime.loaded_at));
        let unrouted_metrics = metrics.route("", "");
        Ok(Self {
            shared: Arc::new(Shared {
                runtime: ArcSwap::from_pointee(runtime),
                unrouted_metrics,
                metrics,
                clients,
                states,
                health: health::Supervisor::default(),
                config_path,
                draining: AtomicBool::new(false),
                serving: AtomicBool::new(false),
                generation: AtomicU64::new(1),
                reload_lock: Mutex::new(ReloadRecord::default()),
                file_bytes: Mutex::new(None),
            }),
        })
    }

    /// Binds the traffic listener named by the config.
    pub async fn bind(&self) -> std::io::Result<TrafficListener> {
        let address = self.shared.runtime.load().config.server.listen.0.clone();
        TrafficListener::bind(&address).await
    }

    /// Serves `listener` until `shutdown` resolves, then drains: returns when every connection
    /// has finished or the drain timeout has passed.
    pub async fn serve(&self, listener: TrafficListener, shutdown: impl Future<Output = ()>) {
        let max_connections = self
            .shared
            .runtime
            .load()
            .config
            .server
            .max_connections
            .get() as usize;
        self.shared.serving.store(true, Ordering::Release);
        self.shared
            .health
            .reconcile(&self.shared.runtime.load(), &self.shared.metrics);
        server::serve(
            Arc::clone(&self.shared),
            listener,
            max_connections,
            shutdown,
        )
        .await;
        self.shared.health.stop();
        self.shared.serving.store(false, Ordering::Release);
    }

    /// Reads the config file again and puts it in force if it is valid.
    pub fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let Some(path) = &self.shared.config_path else {
            return Err(ReloadError::NoFile);
        };
        let result = match std::fs::read(path) {
            Ok(bytes) => {
                let parsed = sekisho_config::parse_file_contents(&bytes, path);
                *self.file_bytes() = Some(bytes);
                parsed
            }
            Err(error) => Err(sekisho_config::ConfigError::unreadable(path, &error)),
        }
        .map_err(ReloadError::from)
        .and_then(|config| self.apply(config));
        self.record_reload(&result);
        result
    }

    /// Puts `config` in force if it can be built.
    pub fn reload_with(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        let result = self.apply(config);
        self.record_reload(&result);
        result
    }

    fn apply(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        // One reload at a time, so generations are built and swapped in order.
        let mut record = self
            .shared
            .reload_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.shared.runtime.load_full();
        let needs_restart = restart_only_changes(&current.config, &config);
        let generation = self.shared.generation.load(Ordering::Relaxed) + 1;
        let base_dir = self.shared.config_path.as_deref().and_then(Path::parent);
        let runtime = Runtime::build(
            Arc::new(config),
            base_dir,
            &self.shared.clients,
            &self.shared.states,
            &self.shared.metrics,
            generation,
        )?;
        let summary = runtime.config.summary();
        self.shared
            .metrics
            .config_loaded_timestamp
            .set(unix_seconds(runtime.loaded_at));
        let runtime = Arc::new(runtime);
        self.shared.runtime.store(Arc::clone(&runtime));
        self.shared.generation.store(generation, Ordering::Relaxed);
        self.shared
            .metrics
            .set_upstreams(runtime.upstreams.values().cloned().collect());
        self.shared
            .metrics
            .set_adaptive_limits(runtime.adaptive_limits());
        self.shared.states.retain(&runtime.config);
        if self.shared.serving.load(Ordering::Acquire) {
            self.shared.health.reconcile(&runtime, &self.shared.metrics);
        }
        record.at = Some(SystemTime::now());
        record.error = None;
        Ok(ReloadSummary {
            generation,
            summary,
            needs_restart,
        })
    }

    fn record_reload(&self, result: &Result<ReloadSummary, ReloadError>) {
        self.shared.metrics.config_reload(result.is_ok());
        match result {
            Ok(summary) => {
                tracing::info!(
                    generation = summary.generation,
                    summary = %summary.summary,
                    "config reloaded"
                );
                for setting in &summary.needs_restart {
                    tracing::warn!(setting = %setting, "changed setting needs a restart to take effect");
                }
            }
            Err(error) => {
                let mut record = self
                    .shared
                    .reload_lock
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                record.at = Some(SystemTime::now());
                record.error = Some(error.to_string());
                tracing::error!(error = %error, "config reload refused; the previous config stays in force");
            }
        }
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.shared.runtime.load().config)
    }

    /// The path reloads read.
    pub fn config_path(&self) -> Option<&Path> {
        self.shared.config_path.as_deref()
    }

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
        let now = std::time::Instant::now();
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

impl Shared {
    fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

use clock::unix_ms;

fn circuit_view(name: &str, circuit: &upstream::Circuit) -> CircuitView {
    let now = std::time::Instant::now();
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

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Settings read once at start; a reload that changes them says so.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("server.listen".to_owned());
    }
    if old.server.workers != new.server.workers {
        changed.push("server.workers".to_owned());
    }
    if old.server.max_connections != new.server.max_connections {
        changed.push("server.max_connections".to_owned());
    }
    if old.server.tls.is_some() != new.server.tls.is_some() {
        changed.push("server.tls (on/off)".to_owned());
    }
    if old.admin.listen != new.admin.listen {
        changed.push("admin.listen".to_owned());
    }
    changed
}

impl Gateway {
    fn file_bytes(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.shared
            .file_bytes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reloads whenever the config file's contents change, checking every `interval`, until the
    /// returned future is dropped. An unreadable or invalid file is logged and skipped; the
    /// config in force stays.
    pub async fn watch_config_file(&self, interval: std::time::Duration) {
        let Some(path) = self.shared.config_path.clone() else {
            return;
        };
        if let Ok(bytes) = tokio::fs::read(&path).await {
            self.file_bytes().get_or_insert(bytes);
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        // A look is a stat (microseconds, done in place); the file is read only when its size or
        // modification time moved, and every tenth look anyway (a file system whose clock is too
        // coarse to tell two quick writes apart).
        let mut last_stat = None;
        let mut looks = 0u32;
        loop {
            ticker.tick().await;
            looks = looks.wrapping_add(1);
            let stat = std::fs::metadata(&path)
                .ok()
                .map(|m| (m.modified().ok(), m.len()));
            if stat.is_some() && stat == last_stat && looks % 10 != 0 {
                continue;
            }
            last_stat = stat;
            let Ok(contents) = tokio::fs::read(&path).await else {
                continue;
            };
            // Compared with what the last reload read, not with the previous look: a reload
            // by signal or API in between must not hide a change (A → B by SIGHUP → A again).
            if self.file_bytes().as_deref() == Some(contents.as_slice()) {
                continue;
            }
            tracing::info!(path = %path.display(), "config file changed; reloading");
            let gateway = self.clone();
            // Building a runtime reads TLS files: keep it off the reactor.
            let _ = tokio::task::spawn_blocking(move || gateway.reload()).await;
        }
    }
}
