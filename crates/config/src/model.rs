//! The typed configuration, one struct per TOML table of CONTRACT.md.
//!
//! Every struct refuses unknown keys, every value is checked as it is read (ranges, formats), and
//! every key but `server.listen`, an upstream's `targets` and a route's `upstream` has a default.
//! Cross-references (route → upstream, redis backends → `store.redis`) are checked afterwards in
//! `validate.rs`, with the span of the offending value kept through [`Spanned`].

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
pub use toml::Spanned;

use crate::duration::{ConfigDuration, NonZeroDuration};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The traffic listener.
    pub server: Server,
    /// The admin listener: API, metrics, health, dashboard.
    #[serde(default)]
    pub admin: Admin,
    /// Shared state; all optional: without them every state is embedded.
    #[serde(default)]
    pub store: Store,
    /// Upstreams (groups of targets) by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Upstream>")]
    pub upstreams: BTreeMap<Spanned<String>, Upstream>,
    /// Routes, matched in order: the first that matches a request takes it.
    #[serde(default)]
    #[schemars(with = "Vec<Route>")]
    pub routes: Vec<Spanned<Route>>,
}

/// `[server]`: the traffic listener.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Address to listen on, e.g. "127.0.0.1:8080" or "0.0.0.0:443".
    pub listen: SocketAddress,
    /// Runtime worker threads; default: one per core.
    #[serde(default)]
    pub workers: Option<Positive>,
    /// One JSON line per request on stderr; false for benchmarks.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Request line plus headers, at most this many bytes; beyond: 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Bytes,
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

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin listener.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddress,
    /// Bearer token for /api/*. Without it the API is open, which is allowed only while the
    /// admin listener is on a loopback address.
    #[serde(default)]
    pub token: Option<String>,
    /// How often the config file is checked for changes; "0s" turns the watch off.
    #[serde(default = "default_watch_interval")]
    pub watch_interval: ConfigDuration,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
            watch_interval: default_watch_interval(),
        }
    }
}

/// `[store]`: shared state for running several instances side by side.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// Redis URL for state shared across instances.
    #[serde(default)]
    pub redis: Option<String>,
    /// PostgreSQL URL; default: SQLite under `data_dir`.
    #[serde(default)]
    pub database: Option<String>,
    /// Directory for embedded state.
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    /// The in-process (L1) response cache holds at most this many entries (extension).
    #[serde(default = "default_cache_entries")]
    pub cache_max_entries: Positive,
    /// … and at most this many bytes of responses (extension).
    #[serde(default = "default_cache_bytes")]
    pub cache_max_bytes: Bytes,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            redis: None,
            database: None,
            data_dir: default_data_dir(),
            cache_max_entries: default_cache_entries(),
            cache_max_bytes: default_cache_bytes(),
        }
    }
}

/// `[upstreams.NAME]`: a group of targets.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Addresses ("host:port") or tables `{ address, weight, backup }`.
    #[schemars(with = "Vec<Target>")]
    pub targets: Spanned<Vec<Target>>,
    /// Load-balancing algorithm.
    #[serde(default)]
    pub balance: Balance,
    /// Key of `consistent_hash`: client_ip | header:NAME | cookie:NAME | query:NAME.
    #[serde(default)]
    pub hash_key: Option<HashKey>,
    /// Backups take traffic while fewer than this share of the others are healthy.
    #[serde(default = "default_failover_threshold")]
    pub failover_threshold: Ratio,
    /// With no healthy target: "fail" answers 503 NO_HEALTHY_UPSTREAM, "spread" tries all.
    #[serde(default)]
    pub panic: PanicMode,
    /// Longest wait for a TCP connection to a target.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: NonZeroDuration,
    /// Protocol spoken to the targets: "http1", or "h2c" (HTTP/2 with prior knowledge).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Idle pooled connections kept per target.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_target: u32,
    /// A pooled connection idle this long is closed.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: NonZeroDuration,
    /// Active health checks.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive health (outlier detection).
    #[serde(default)]
    pub outlier: Option<Outlier>,
    /// Circuit breaker of this upstream.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Bounded concurrency towards this upstream.
    #[serde(default)]
    pub bulkhead: Option<Bulkhead>,
    /// A target back in service (or added by a reload) ramps its share up over this time;
    /// same as `outlier.slow_start`, which it overrides when set.
    #[serde(default)]
    pub slow_start: Option<ConfigDuration>,
}

/// One target of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// "host:port".
    pub address: String,
    /// Relative share of the traffic, ≥ 1.
    pub weight: u32,
    /// Takes traffic only during failover.
    pub backup: bool,
}

/// Load-balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's interleaving).
    WeightedRoundRobin,
    /// Fewest requests in flight.
    LeastConnections,
    /// Peak-EWMA latency with power-of-two choices.
    LeastResponseTime,
    /// Hash of the client IP.
    IpHash,
    /// Consistent hashing of `hash_key`.
    ConsistentHash,
    /// Random, weighted by a health score.
    WeightedRandom,
}

/// `panic` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PanicMode {
    /// Answer 503 NO_HEALTHY_UPSTREAM.
    #[default]
    Fail,
    /// Spread over all targets anyway.
    Spread,
}

/// Protocol towards an upstream's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

/// Where a request's key comes from (hashing, rate limiting).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// A request header.
    Header(http::HeaderName),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

/// `[upstreams.NAME.health_check]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// "http" (GET `path`, expect `expected_statuses`) or "tcp" (connect only).
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    /// Path of the HTTP check.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Statuses that count as healthy; default 200–399.
    #[serde(default)]
    pub expected_statuses: Option<Vec<StatusCode>>,
    /// Time between checks of one target.
    #[serde(default = "default_health_interval")]
    pub interval: NonZeroDuration,
    /// Random extra delay per check, up to this share of `interval`.
    #[serde(default = "default_health_jitter")]
    pub jitter: Ratio,
    /// Longest wait for one check.
    #[serde(default = "default_health_timeout")]
    pub timeout: NonZeroDuration,
    /// Failed checks in a row before a target is marked unhealthy.
    #[serde(default = "default_two")]
    pub unhealthy_threshold: Positive,
    /// Passed checks in a row before a target is marked healthy again.
    #[serde(default = "default_two")]
    pub healthy_threshold: Positive,
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// An HTTP GET.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
}

/// `[upstreams.NAME.outlier]`: passive health.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    /// Eject a target after this many failures in a row.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: Positive,
    /// Ejection lasts this long times the number of times the target was ejected.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: NonZeroDuration,
    /// Never eject more than this percentage of the targets.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: Percent,
    /// A target back in service ramps its share up over this time; "0s": at once.
    #[serde(default)]
    pub slow_start: ConfigDuration,
    /// What counts as a failure: "connect_error", "timeout", and statuses.
    #[serde(default = "default_outlier_failures")]
    pub failure_on: Vec<FailureKind>,
    /// Upper bound of a growing ejection.
    #[serde(default = "default_max_ejection_time")]
    pub max_ejection_time: NonZeroDuration,
    /// Window of the failure-rate comparison between targets.
    #[serde(default = "default_outlier_interval")]
    pub interval: NonZeroDuration,
    /// Eject a target whose failure rate in the window exceeds its peers' mean by more than
    /// this (0.3 = 30 points); 1 turns the comparison off.
    #[serde(default = "default_failure_rate_margin")]
    pub failure_rate_margin: Ratio,
    /// A target's failure rate is judged only with at least this many requests in the window.
    #[serde(default = "default_failure_rate_minimum_requests")]
    pub failure_rate_minimum_requests: Positive,
    /// A passing active health check ends an ejection early (Envoy's default); turn it off when
    /// the health endpoint can pass while real requests fail.
    #[serde(default = "default_true")]
    pub uneject_on_health_check: bool,
}

/// `[upstreams.NAME.circuit_breaker]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Open when at least this share of the calls in the window failed.
    #[serde(default = "default_half")]
    pub failure_rate_threshold: Ratio,
    /// The rates are judged only once the window holds this many calls.
    #[serde(default = "default_minimum_calls")]
    pub minimum_calls: Positive,
    /// Time-based sliding window.
    #[serde(default = "default_window")]
    pub window: NonZeroDuration,
    /// Count-based sliding window instead: the last N calls.
    #[serde(default)]
    pub window_calls: Option<Positive>,
    /// A call slower than this is slow.
    #[serde(default = "default_slow_call_threshold")]
    pub slow_call_threshold: NonZeroDuration,
    /// Open when at least this share of the calls were slow.
    #[serde(default = "default_one")]
    pub slow_call_rate_threshold: Ratio,
    /// Rejecting at once for this long, then half-open.
    #[serde(default = "default_open_for")]
    pub open_for: NonZeroDuration,
    /// Each reopening multiplies `open_for` by this (1 = constant).
    #[serde(default = "default_open_for_multiplier")]
    pub open_for_multiplier: f64,
    /// Upper bound of a growing `open_for`.
    #[serde(default)]
    pub max_open_for: Option<NonZeroDuration>,
    /// Probes admitted in half-open.
    #[serde(default = "default_half_open_calls")]
    pub half_open_calls: Positive,
    /// Consecutive-failures mode: open after this many failures in a row.
    #[serde(default)]
    pub consecutive_failures: Option<Positive>,
    /// Statuses that count as failures; timeouts and connect errors always count.
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<StatusCode>,
}

/// `[upstreams.NAME.bulkhead]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bulkhead {
    /// In flight to this upstream, at most.
    pub max_concurrent: Positive,
    /// Waiting for a slot, at most.
    #[serde(default)]
    pub max_queued: u32,
    /// Longest wait for a slot.
    #[serde(default)]
    pub max_wait: ConfigDuration,
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Matches this path and everything under it (segment-aware: "/api" matches "/api/x", not "/apix").
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path_prefix: Option<Spanned<String>>,
    /// Matches exactly this path.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// Name of the upstream that serves this route.
    #[schemars(with = "String")]
    pub upstream: Spanned<String>,
    /// Deadline of the whole request, retries included.
    #[serde(default = "default_route_timeout")]
    pub timeout: NonZeroDuration,
    /// Remove the matched prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Methods this route takes; default: any.
    #[serde(default)]
    pub methods: Option<Vec<Method>>,
    /// Host this route takes (without port; "*.example.com" for a suffix); default: any.
    #[serde(default)]
    pub host: Option<String>,
    /// Request headers that must be present with these values ("*": present with any value).
    #[serde(default)]
    pub match_headers: BTreeMap<HeaderNameString, String>,
    /// Request body limit of this route; default: `server.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<Bytes>,
    /// Header rewriting.
    #[serde(default)]
    pub headers: Option<HeaderRules>,
    /// Retries.
    #[serde(default)]
    pub retry: Option<Retry>,
    /// Rate limit.
    #[serde(default)]
    #[schemars(with = "Option<RateLimit>")]
    pub rate_limit: Option<Spanned<RateLimit>>,
    /// Response cache.
    #[serde(default)]
    pub cache: Option<Cache>,
    /// What answers when the upstream cannot (extension): an alternate upstream, a static
    /// answer, or the alternate first and the static answer if it fails too.
    #[serde(default)]
    #[schemars(with = "Option<Fallback>")]
    pub fallback: Option<Spanned<Fallback>>,
    /// This route's own adaptive concurrency limit (extension), instead of the server's.
    #[serde(default)]
    #[schemars(with = "Option<AdaptiveConcurrency>")]
    pub adaptive_concurrency: Option<Spanned<AdaptiveConcurrency>>,
}

/// `[routes.fallback]` (extension).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// When it answers: "circuit_open", "bulkhead_full", "no_healthy_upstream", "timeout",
    /// "upstream_error" (failed connect or broken answer) and statuses the upstream answered.
    /// Default: the five gateway errors, no status.
    #[serde(default = "default_fallback_on")]
    pub on: Vec<FallbackOn>,
    /// An upstream tried once the route's upstream failed (the request is sent to it only if its
    /// body can be sent again: none, buffered by `[routes.retry]`, or unread).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub upstream: Option<Spanned<String>>,
    /// Status of the static answer.
    #[serde(default)]
    pub status: Option<u16>,
    /// Body of the static answer.
    #[serde(default)]
    pub body: Option<String>,
    /// `Content-Type` of the static answer.
    #[serde(default = "default_fallback_content_type")]
    pub content_type: HeaderValueString,
    /// More headers of the static answer.
    #[serde(default)]
    pub headers: BTreeMap<HeaderNameString, HeaderValueString>,
}

impl Fallback {
    /// Whether a static answer is configured.
    pub fn has_static(&self) -> bool {
        self.status.is_some() || self.body.is_some()
    }
}

/// A condition under which a fallback answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackOn {
    /// The upstream's circuit is open.
    CircuitOpen,
    /// The upstream's bulkhead is full.
    BulkheadFull,
    /// No target can take the request.
    NoHealthyUpstream,
    /// The route's deadline (or the last try's) passed.
    Timeout,
    /// A failed connect or a broken answer.
    UpstreamError,
    /// The upstream answered this status.
    Status(u16),
}

/// `[routes.headers]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Added or overwritten on the way up.
    #[serde(default)]
    pub request_set: BTreeMap<HeaderNameString, HeaderValueString>,
    /// Removed on the way up.
    #[serde(default)]
    pub request_remove: Vec<HeaderNameString>,
    /// Added or overwritten on the way down.
    #[serde(default)]
    pub response_set: BTreeMap<HeaderNameString, HeaderValueString>,
    /// Removed on the way down.
    #[serde(default)]
    pub response_remove: Vec<HeaderNameString>,
}

/// `[routes.retry]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Tries in all, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: Positive,
    /// First backoff; doubles each retry.
    #[serde(default = "default_backoff")]
    pub backoff: ConfigDuration,
    /// Backoff cap.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: ConfigDuration,
    /// full | equal | decorrelated | none.
    #[serde(default)]
    pub jitter: Jitter,
    /// What is retried: "connect_error", "timeout" and statuses.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<FailureKind>,
    /// Retry POST and other non-idempotent methods too.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Deadline of one try; default: none beyond the route's timeout.
    #[serde(default)]
    pub per_try_timeout: Option<NonZeroDuration>,
    /// Retries ≤ this share of the requests of the last 10 s …
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: Ratio,
    /// … plus this many per second.
    #[serde(default = "default_budget_floor")]
    pub budget_min_per_second: u32,
    /// A request body up to this size is buffered so that it can be retried.
    #[serde(default = "default_retry_buffer")]
    pub max_buffered_body_bytes: Bytes,
}

/// Backoff jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Uniform in [0, backoff].
    #[default]
    Full,
    /// backoff/2 + uniform in [0, backoff/2].
    Equal,
    /// AWS's decorrelated jitter.
    Decorrelated,
    /// Exactly the backoff.
    None,
}

/// What counts as a failure (retry_on, outlier failure_on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The TCP connection could not be made.
    ConnectError,
    /// A deadline passed.
    Timeout,
    /// The target answered this status.
    Status(u16),
}

/// `[routes.rate_limit]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// token_bucket | gcra | fixed_window | sliding_window_log | sliding_window_counter.
    #[serde(default)]
    pub algorithm: RateLimitAlgorithm,
    /// client_ip | header:NAME | user | route | api_key, or several joined by "+".
    #[serde(default = "default_rate_key")]
    pub key: String,
    /// token_bucket, gcra: burst.
    #[serde(default)]
    pub capacity: Option<Positive>,
    /// token_bucket, gcra: sustained rate.
    #[serde(default)]
    pub refill_per_second: Option<f64>,
    /// fixed_window, sliding_window_*: requests per window.
    #[serde(default)]
    pub limit: Option<Positive>,
    /// fixed_window, sliding_window_*: the window.
    #[serde(default)]
    pub window: Option<NonZeroDuration>,
    /// Tokens one request costs.
    #[serde(default = "default_one_u32")]
    pub cost: Positive,
    /// local | redis.
    #[serde(default)]
    pub backend: RateLimitBackend,
    /// Redis down: local | allow | deny.
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

/// Rate-limit algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAlgorithm {
    /// Token bucket.
    #[default]
    TokenBucket,
    /// Generic cell rate algorithm.
    Gcra,
    /// Fixed window counter.
    FixedWindow,
    /// Sliding window log.
    SlidingWindowLog,
    /// Sliding window counter.
    SlidingWindowCounter,
}

/// Where rate-limit state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    /// In this process.
    #[default]
    Local,
    /// In Redis, shared by all instances.
    Redis,
}

/// Behaviour of a Redis-backed limit while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Enforce this instance's share locally.
    #[default]
    Local,
    /// Let requests through.
    Allow,
    /// Refuse requests.
    Deny,
}

/// `[routes.cache]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// Freshness when the upstream sends no Cache-Control.
    #[serde(default = "default_cache_ttl")]
    pub ttl: NonZeroDuration,
    /// 404/410 are kept this long.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: ConfigDuration,
    /// Serve stale this long while one refresh runs.
    #[serde(default)]
    pub stale_while_revalidate: ConfigDuration,
    /// Serve stale this long when the upstream fails.
    #[serde(default)]
    pub stale_if_error: ConfigDuration,
    /// Larger responses are passed through, not cached.
    #[serde(default = "default_cache_body")]
    pub max_body_bytes: Bytes,
    /// Cache responses to requests with Authorization.
    #[serde(default)]
    pub cache_authorized: bool,
    /// TTL jitter share (avalanche guard).
    #[serde(default = "default_cache_jitter")]
    pub ttl_jitter: Ratio,
    /// How long an entry stays in the in-process tier (at most the freshness lifetime; the
    /// Redis tier keeps it for the whole lifetime). Default: the whole lifetime (extension).
    #[serde(default)]
    pub l1_ttl: Option<NonZeroDuration>,
    /// With several instances: how long a miss waits for another instance already fetching the
    /// same response before going to the upstream itself (extension).
    #[serde(default = "default_cache_lock_wait")]
    pub lock_wait: NonZeroDuration,
    /// The `v{n}` of the route's keys (`<route>:v<n>:<url>`): raising it orphans every entry of
    /// the route at once, on every instance (extension).
    #[serde(default = "default_cache_version")]
    pub version: Positive,
}

/// A "host:port" address; the host may be a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct SocketAddress(pub String);

/// A whole number ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct Positive(#[schemars(range(min = 1))] pub u32);

/// A byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct Bytes(pub u64);

/// A share between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, JsonSchema)]
#[schemars(transparent)]
pub struct Ratio(#[schemars(range(min = 0.0, max = 1.0))] pub f64);

/// A percentage between 0 and 100.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, JsonSchema)]
#[schemars(transparent)]
pub struct Percent(#[schemars(range(min = 0.0, max = 100.0))] pub f64);

/// An HTTP status code, 100–599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct StatusCode(#[schemars(range(min = 100, max = 599))] pub u16);

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct Method(#[schemars(with = "String")] pub http::Method);

/// A valid header name, kept as written (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct HeaderNameString(pub String);

/// A valid header value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct HeaderValueString(pub String);

impl Positive {
    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl HeaderNameString {
    /// The parsed name (lower case).
    pub fn to_header_name(&self) -> http::HeaderName {
        // Checked when read, so the fallback is never taken.
        http::HeaderName::from_bytes(self.0.as_bytes())
            .unwrap_or_else(|_| http::HeaderName::from_static("x-invalid"))
    }
}

impl fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl SocketAddress {
    /// Splits into host and port.
    pub fn host_port(&self) -> (&str, u16) {
        split_host_port(&self.0).unwrap_or(("", 0))
    }

    /// True when the host is a loopback address or "localhost".
    pub fn is_loopback(&self) -> bool {
        let (host, _) = self.host_port();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

/// `"host:port"` → (host, port); IPv6 in brackets.
pub fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
        return None;
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return None;
    }
    Some((host, port.parse().ok()?))
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
fn default_true() -> bool {
    true
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
fn default_max_connections() -> Positive {
    Positive(10_000)
}
fn default_admin_listen() -> SocketAddress {
    SocketAddress("127.0.0.1:9901".to_owned())
}
fn default_watch_interval() -> ConfigDuration {
    ConfigDuration::from_millis(1_000)
}
fn default_data_dir() -> String {
    "./data".to_owned()
}
fn default_failover_threshold() -> Ratio {
    Ratio(0.5)
}
fn default_connect_timeout() -> NonZeroDuration {
    NonZeroDuration::from_millis(2_000)
}
fn default_pool_max_idle() -> u32 {
    1024
}
fn default_pool_idle_timeout() -> NonZeroDuration {
    NonZeroDuration::from_millis(90_000)
}
fn default_health_path() -> String {
    "/health".to_owned()
}
fn default_health_interval() -> NonZeroDuration {
    NonZeroDuration::from_millis(5_000)
}
fn default_health_jitter() -> Ratio {
    Ratio(0.1)
}
fn default_health_timeout() -> NonZeroDuration {
    NonZeroDuration::from_millis(1_000)
}
fn default_two() -> Positive {
    Positive(2)
}
fn default_consecutive_failures() -> Positive {
    Positive(5)
}
fn default_base_ejection() -> NonZeroDuration {
    NonZeroDuration::from_millis(30_000)
}
fn default_max_ejection_percent() -> Percent {
    Percent(50.0)
}
fn default_max_ejection_time() -> NonZeroDuration {
    NonZeroDuration::from_millis(300_000)
}
fn default_outlier_interval() -> NonZeroDuration {
    NonZeroDuration::from_millis(10_000)
}
fn default_failure_rate_margin() -> Ratio {
    Ratio(0.3)
}
fn default_failure_rate_minimum_requests() -> Positive {
    Positive(20)
}
fn default_fallback_on() -> Vec<FallbackOn> {
    vec![
        FallbackOn::CircuitOpen,
        FallbackOn::BulkheadFull,
        FallbackOn::NoHealthyUpstream,
        FallbackOn::Timeout,
        FallbackOn::UpstreamError,
    ]
}

fn default_fallback_content_type() -> HeaderValueString {
    HeaderValueString("application/json".to_owned())
}

fn default_outlier_failures() -> Vec<FailureKind> {
    vec![
        FailureKind::ConnectError,
        FailureKind::Timeout,
        FailureKind::Status(500),
        FailureKind::Status(502),
        FailureKind::Status(503),
        FailureKind::Status(504),
    ]
}
fn default_half() -> Ratio {
    Ratio(0.5)
}
fn default_one() -> Ratio {
    Ratio(1.0)
}
fn default_minimum_calls() -> Positive {
    Positive(10)
}
fn default_window() -> NonZeroDuration {
    NonZeroDuration::from_millis(60_000)
}
fn default_slow_call_threshold() -> NonZeroDuration {
    NonZeroDuration::from_millis(60_000)
}
fn default_open_for() -> NonZeroDuration {
    NonZeroDuration::from_millis(30_000)
}
fn default_open_for_multiplier() -> f64 {
    1.0
}
fn default_half_open_calls() -> Positive {
    Positive(3)
}
fn default_failure_statuses() -> Vec<StatusCode> {
    [500, 502, 503, 504].into_iter().map(StatusCode).collect()
}
fn default_route_timeout() -> NonZeroDuration {
    NonZeroDuration::from_millis(30_000)
}
fn default_attempts() -> Positive {
    Positive(3)
}
fn default_backoff() -> ConfigDuration {
    ConfigDuration::from_millis(50)
}
fn default_max_backoff() -> ConfigDuration {
    ConfigDuration::from_millis(1_000)
}
fn default_retry_on() -> Vec<FailureKind> {
    vec![
        FailureKind::ConnectError,
        FailureKind::Status(502),
        FailureKind::Status(503),
        FailureKind::Status(504),
    ]
}
fn default_budget_ratio() -> Ratio {
    Ratio(0.2)
}
fn default_budget_floor() -> u32 {
    10
}
fn default_retry_buffer() -> Bytes {
    Bytes(64 * 1024)
}
fn default_rate_key() -> String {
    "client_ip".to_owned()
}
fn default_one_u32() -> Positive {
    Positive(1)
}
fn default_cache_ttl() -> NonZeroDuration {
    NonZeroDuration::from_millis(60_000)
}
fn default_negative_ttl() -> ConfigDuration {
    ConfigDuration::from_millis(5_000)
}
fn default_cache_body() -> Bytes {
    Bytes(1024 * 1024)
}
fn default_cache_entries() -> Positive {
    Positive(10_000)
}
fn default_cache_bytes() -> Bytes {
    Bytes(64 * 1024 * 1024)
}
fn default_cache_version() -> Positive {
    Positive(1)
}
fn default_cache_lock_wait() -> NonZeroDuration {
    NonZeroDuration::from_millis(2_000)
}
fn default_cache_jitter() -> Ratio {
    Ratio(0.1)
}

// ---- value types read with their own checks, so that an invalid value carries its span ----

impl<'de> Deserialize<'de> for SocketAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if split_host_port(&text).is_none() {
            return Err(de::Error::custom(format!(
                "`{text}` is not an address: write it as \"host:port\", e.g. \"127.0.0.1:8080\""
            )));
        }
        Ok(Self(text))
    }
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        if value < 1 || value > i64::from(u32::MAX) {
            return Err(de::Error::custom(format!(
                "must be a whole number from 1 to {}, not {value}",
                u32::MAX
            )));
        }
        Ok(Self(value as u32))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        if value < 0 {
            return Err(de::Error::custom(format!(
                "a byte count cannot be negative ({value})"
            )));
        }
        Ok(Self(value as u64))
    }
}

fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    struct NumberVisitor;
    impl Visitor<'_> for NumberVisitor {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number")
        }
        fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
            Ok(value)
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
            Ok(value as f64)
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }
    }
    deserializer.deserialize_any(NumberVisitor)
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = number(deserializer)?;
        if !(0.0..=1.0).contains(&value) {
            return Err(de::Error::custom(format!(
                "must be between 0 and 1 (a share: 0.5 is 50 %), not {value}"
            )));
        }
        Ok(Self(value))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = number(deserializer)?;
        if !(0.0..=100.0).contains(&value) {
            return Err(de::Error::custom(format!(
                "must be a percentage between 0 and 100, not {value}"
            )));
        }
        Ok(Self(value))
    }
}

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        if !(100..=599).contains(&value) {
            return Err(de::Error::custom(format!(
                "`{value}` is not an HTTP status (100–599)"
            )));
        }
        Ok(Self(value as u16))
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let upper = text.to_ascii_uppercase();
        if upper != text || upper.is_empty() {
            return Err(de::Error::custom(format!(
                "`{text}` is not a method: write methods in capitals, e.g. \"GET\""
            )));
        }
        http::Method::from_bytes(upper.as_bytes())
            .map(Self)
            .map_err(|_| de::Error::custom(format!("`{text}` is not an HTTP method")))
    }
}

impl<'de> Deserialize<'de> for HeaderNameString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        http::HeaderName::from_bytes(text.as_bytes())
            .map_err(|_| de::Error::custom(format!("`{text}` is not a valid header name")))?;
        Ok(Self(text))
    }
}

impl<'de> Deserialize<'de> for HeaderValueString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        http::HeaderValue::from_str(&text)
            .map_err(|_| de::Error::custom(format!("`{text}` is not a valid header value")))?;
        Ok(Self(text))
    }
}

impl HashKey {
    /// Parses `client_ip | header:NAME | cookie:NAME | query:NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected client_ip, header:NAME, cookie:NAME or query:NAME";
        if text == "client_ip" {
            return Ok(Self::ClientIp);
        }
        let Some((kind, name)) = text.split_once(':') else {
            return Err(format!("`{text}` is not a hash key: {expected}"));
        };
        if name.is_empty() {
            return Err(format!("`{text}` has no name after `{kind}:`"));
        }
        match kind {
            "header" => http::HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("`{name}` is not a valid header name")),
            "cookie" => Ok(Self::Cookie(name.to_owned())),
            "query" => Ok(Self::Query(name.to_owned())),
            _ => Err(format!("`{text}` is not a hash key: {expected}")),
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

impl JsonSchema for HashKey {
    fn schema_name() -> String {
        "HashKey".to_owned()
    }
    fn json_schema(generator: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        let mut schema = String::json_schema(generator).into_object();
        schema.string().pattern = Some("^(client_ip|(header|cookie|query):.+)$".to_owned());
        schema.into()
    }
}

impl<'de> Deserialize<'de> for FailureKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FailureVisitor;
        impl Visitor<'_> for FailureVisitor {
            type Value = FailureKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"connect_error\", \"timeout\" or an HTTP status such as 503")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<FailureKind, E> {
                match value {
                    "connect_error" => Ok(FailureKind::ConnectError),
                    "timeout" => Ok(FailureKind::Timeout),
                    other => Err(E::custom(format!(
                        "`{other}` is not a failure kind: expected \"connect_error\", \"timeout\" or a status such as 503"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<FailureKind, E> {
                if (100..=599).contains(&value) {
                    Ok(FailureKind::Status(value as u16))
                } else {
                    Err(E::custom(format!(
                        "`{value}` is not an HTTP status (100–599)"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<FailureKind, E> {
                self.visit_i64(value.min(i64::MAX as u64) as i64)
            }
        }
        deserializer.deserialize_any(FailureVisitor)
    }
}

impl<'de> Deserialize<'de> for FallbackOn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FallbackVisitor;
        impl Visitor<'_> for FallbackVisitor {
            type Value = FallbackOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a fallback condition or an HTTP status such as 503")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<FallbackOn, E> {
                match value {
                    "circuit_open" => Ok(FallbackOn::CircuitOpen),
                    "bulkhead_full" => Ok(FallbackOn::BulkheadFull),
                    "no_healthy_upstream" => Ok(FallbackOn::NoHealthyUpstream),
                    "timeout" => Ok(FallbackOn::Timeout),
                    "upstream_error" => Ok(FallbackOn::UpstreamError),
                    other => Err(E::custom(format!(
                        "`{other}` is not a fallback condition: expected \"circuit_open\", \"bulkhead_full\", \"no_healthy_upstream\", \"timeout\", \"upstream_error\" or a status such as 503"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<FallbackOn, E> {
                if (100..=599).contains(&value) {
                    Ok(FallbackOn::Status(value as u16))
                } else {
                    Err(E::custom(format!(
                        "`{value}` is not an HTTP status (100–599)"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<FallbackOn, E> {
                self.visit_i64(value.min(i64::MAX as u64) as i64)
            }
        }
        deserializer.deserialize_any(FallbackVisitor)
    }
}

impl JsonSchema for FallbackOn {
    fn schema_name() -> String {
        "FallbackOn".to_owned()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        serde_json::from_value(serde_json::json!({
            "oneOf": [
                {
                    "type": "string",
                    "enum": ["circuit_open", "bulkhead_full", "no_healthy_upstream", "timeout", "upstream_error"]
                },
                { "type": "integer", "minimum": 100, "maximum": 599 }
            ]
        }))
        .unwrap_or(schemars::schema::Schema::Bool(true))
    }
}

impl JsonSchema for FailureKind {
    fn schema_name() -> String {
        "FailureKind".to_owned()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        serde_json::from_value(serde_json::json!({
            "oneOf": [
                { "type": "string", "enum": ["connect_error", "timeout"] },
                { "type": "integer", "minimum": 100, "maximum": 599 }
            ]
        }))
        .unwrap_or(schemars::schema::Schema::Bool(true))
    }
}

impl JsonSchema for Target {
    fn schema_name() -> String {
        "Target".to_owned()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        serde_json::from_value(serde_json::json!({
            "oneOf": [
                { "type": "string", "description": "\"host:port\"" },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["address"],
                    "properties": {
                        "address": { "type": "string" },
                        "weight": { "type": "integer", "minimum": 1 },
                        "backup": { "type": "boolean" }
                    }
                }
            ]
        }))
        .unwrap_or(schemars::schema::Schema::Bool(true))
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TargetTable {
            address: SocketAddress,
            #[serde(default = "default_weight")]
            weight: Positive,
            #[serde(default)]
            backup: bool,
        }
        fn default_weight() -> Positive {
            Positive(1)
        }
        struct TargetVisitor;
        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = Target;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"host:port\" or { address = \"host:port\", weight = N, backup = bool }",
                )
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Target, E> {
                let address =
                    SocketAddress::deserialize(de::value::StrDeserializer::<E>::new(value))?;
                Ok(Target {
                    address: address.0,
                    weight: 1,
                    backup: false,
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Target, M::Error> {
                let table = TargetTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Target {
                    address: table.address.0,
                    weight: table.weight.0,
                    backup: table.backup,
                })
            }
            fn visit_seq<S: SeqAccess<'de>>(self, _: S) -> Result<Target, S::Error> {
                Err(de::Error::custom(
                    "a target is \"host:port\" or a table, not a list",
                ))
            }
        }
        deserializer.deserialize_any(TargetVisitor)
    }
}
