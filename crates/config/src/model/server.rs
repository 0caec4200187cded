//! `[server]`: the traffic listener, its TLS files and its load shedding.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{default_true, Bytes, Positive, RateLimit, Ratio, SocketAddress, Spanned};
use crate::duration::{ConfigDuration, NonZeroDuration};

/// `[server]`: the traffic listener.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Address to listen on, e.g. "127.0.0.1:8080" or "0.0.0.0:443".
    pub listen: SocketAddress,
    /// Runtime worker threads; default: one per core.
    #[serde(default)]
    pub workers: Option<Positive>,
    /// How the workers share the work (extension): `per_worker` (default) — each worker thread
    /// runs an event loop of its own, accepts on the listener itself, keeps its own idle
    /// upstream connections and its own overload probe, and serves every connection it
    /// accepted to the end (nginx's and Envoy's model); `shared` — one work-stealing runtime
    /// whose threads take any task.
    #[serde(default)]
    pub worker_model: WorkerModel,
    /// One JSON line per request on stderr; false for benchmarks.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Request line plus headers, at most this many bytes; beyond: 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Bytes,
    /// Header fields in a request head, at most (extension); beyond: 431. The default, 100, is
    /// HAProxy's and Envoy's order of magnitude and hyper's own, which it keeps on the stack;
    /// a larger count costs every request two header arrays on the heap.
    #[serde(default = "default_max_header_count")]
    pub max_header_count: Positive,
    /// Request body, at most this many bytes; beyond: 413 (a route may set its own).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: Bytes,
    /// Longest wait for a client's request headers (slowloris guard).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: NonZeroDuration,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: NonZeroDuration,
    /// Graceful shutdown: longest wait for in-flight requests.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
    /// Client connections open at once, at most; further clients wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: Positive,
    /// Bind the listener with `SO_REUSEPORT` (extension; Linux and the BSDs): several sekisho
    /// processes may listen on one address and the kernel spreads new connections over them —
    /// a new version started beside the old one before the old is stopped, or one process per
    /// core. Default false: a second process on the address fails to start.
    #[serde(default)]
    pub reuse_port: bool,
    /// Serve the common HTTP/1.1 exchanges (bodiless requests) with sekisho's own codec
    /// (extension; decision 0019): fewer instructions per request, no buffer held by an idle
    /// connection, and the upstream's interim (1xx) answers passed through. Anything else on a
    /// connection — bodies, upgrades, HTTP/1.0, unusual heads — is served by hyper as before.
    /// false: hyper serves every exchange.
    #[serde(default = "default_true")]
    pub owned_http1: bool,
    /// HTTPS on this listener (h2 by ALPN).
    #[serde(default)]
    #[schemars(with = "Option<Tls>")]
    pub tls: Option<Spanned<Tls>>,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` is believed when finding the client's
    /// address (CIDRs or single addresses); by default none: the peer is the client.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// A rate limit over every request, before routing (extension); routes have their own too.
    #[serde(default)]
    #[schemars(with = "Option<RateLimit>")]
    pub rate_limit: Option<Spanned<RateLimit>>,
    /// Load shedding: every route gets its own adaptive concurrency limit with these settings
    /// (a route may set its own, or turn it off); calls beyond it get 503 OVERLOADED.
    #[serde(default)]
    #[schemars(with = "Option<AdaptiveConcurrency>")]
    pub adaptive_concurrency: Option<Spanned<AdaptiveConcurrency>>,
    /// The gateway's own overload guard (extension): while its event loop's delay is past
    /// `max_loop_delay`, new connections wait in the listen backlog and requests on open ones
    /// get 503 OVERLOADED with `Connection: close`, before routing.
    #[serde(default)]
    pub overload: Option<Overload>,
}

/// `server.worker_model`: how the worker threads share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerModel {
    /// An event loop per worker thread, each accepting on the listener (its own listener
    /// with `SO_REUSEPORT` when `reuse_port` is set).
    #[default]
    PerWorker,
    /// One work-stealing runtime over all the worker threads.
    Shared,
}

impl Server {
    /// The worker threads: `workers`, or one per core.
    pub fn worker_count(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            |workers| workers.get() as usize,
        )
    }

    /// The event loops serving traffic: one per worker thread (`per_worker`), or one shared.
    pub fn event_loops(&self) -> usize {
        match self.worker_model {
            WorkerModel::PerWorker => self.worker_count(),
            WorkerModel::Shared => 1,
        }
    }
}

/// `[server.overload]` (extension): when the gateway itself is the bottleneck.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overload {
    /// The event loop's own scheduling delay (smoothed) beyond which the gateway is overloaded.
    pub max_loop_delay: NonZeroDuration,
}

/// `[server.adaptive_concurrency]` and `[routes.adaptive_concurrency]` (extension): a limit on
/// calls in flight that follows latency.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConcurrency {
    /// false turns shedding off (for one route, when the server enables it).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// gradient | aimd.
    #[serde(default)]
    pub algorithm: ConcurrencyAlgorithm,
    /// The limit before anything is measured.
    #[serde(default = "default_initial_limit")]
    pub initial_limit: Positive,
    /// The limit never goes below this.
    #[serde(default = "default_min_limit")]
    pub min_limit: Positive,
    /// The limit never goes above this.
    #[serde(default = "default_max_limit")]
    pub max_limit: Positive,
    /// The limit is recomputed once per window (at least this long …
    #[serde(default = "default_concurrency_window")]
    pub window: NonZeroDuration,
    /// … and at least this many answered calls).
    #[serde(default = "default_concurrency_samples")]
    pub min_samples: Positive,
    /// gradient: how far recent latency may exceed its long-run level before the limit shrinks
    /// (1.5: by half).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// gradient: the share of each new estimate taken into the limit.
    #[serde(default = "default_smoothing")]
    pub smoothing: Ratio,
    /// aimd: the limit is multiplied by this after a window with a timeout (0.5 – 0.99).
    #[serde(default = "default_backoff_ratio")]
    pub backoff_ratio: f64,
    /// aimd: an answer slower than this counts as a drop too.
    #[serde(default = "default_aimd_timeout")]
    pub timeout: NonZeroDuration,
}

/// How an adaptive concurrency limit moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyAlgorithm {
    /// Netflix's Gradient2: follows the ratio of long-run to recent latency.
    #[default]
    Gradient,
    /// Additive increase, multiplicative decrease on timeouts.
    Aimd,
}

/// Certificate and key files (PEM) for a listener.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the certificate chain, leaf first.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

fn default_initial_limit() -> Positive {
    Positive(100)
}
fn default_min_limit() -> Positive {
    Positive(5)
}
fn default_max_limit() -> Positive {
    Positive(1000)
}
fn default_concurrency_window() -> NonZeroDuration {
    NonZeroDuration::from_millis(100)
}
fn default_concurrency_samples() -> Positive {
    Positive(10)
}
fn default_tolerance() -> f64 {
    1.5
}
fn default_smoothing() -> Ratio {
    Ratio(0.2)
}
fn default_backoff_ratio() -> f64 {
    0.9
}
fn default_aimd_timeout() -> NonZeroDuration {
    NonZeroDuration::from_millis(5_000)
}
fn default_max_header_bytes() -> Bytes {
    Bytes(16 * 1024)
}
fn default_max_body_bytes() -> Bytes {
    Bytes(10 * 1024 * 1024)
}
fn default_header_read_timeout() -> NonZeroDuration {
    NonZeroDuration::from_millis(10_000)
}
fn default_idle_timeout() -> NonZeroDuration {
    NonZeroDuration::from_millis(60_000)
}
fn default_drain_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(30_000)
}
fn default_max_header_count() -> Positive {
    Positive(DEFAULT_MAX_HEADER_COUNT)
}

/// The default `server.max_header_count` (hyper's own default).
pub const DEFAULT_MAX_HEADER_COUNT: u32 = 100;

fn default_max_connections() -> Positive {
    Positive(10_000)
}
