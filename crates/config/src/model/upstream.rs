//! `[upstreams.NAME]`: targets and balancing, then the sections that guard an upstream: active
//! health checks, outlier detection, circuit breaker and bulkhead.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{
    default_true, FailureKind, Percent, Positive, Ratio, SocketAddress, Spanned, StatusCode,
};
use crate::duration::{ConfigDuration, NonZeroDuration};

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
    /// HTTP/1.1 connections open to one target at once, at most (extension; 0 = no bound): a
    /// request finding none free and the bound reached waits, within its route's `timeout`, for
    /// one to come back instead of opening another — a burst does not become one new upstream
    /// connection per waiting request.
    #[serde(default = "default_max_connections_per_target")]
    pub max_connections_per_target: u32,
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

fn default_failover_threshold() -> Ratio {
    Ratio(0.5)
}
fn default_connect_timeout() -> NonZeroDuration {
    NonZeroDuration::from_millis(2_000)
}
fn default_max_connections_per_target() -> u32 {
    1024
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
