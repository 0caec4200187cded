//! `[[routes]]`: matching, then what a route does to a request: header rewriting, retries and
//! its fallback. Its rate limit and cache have their own files.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{
    AdaptiveConcurrency, Bytes, Cache, FailureKind, HeaderNameString, HeaderValueString, Method,
    Positive, RateLimit, Ratio, RouteAuth, Spanned,
};
use crate::duration::{ConfigDuration, NonZeroDuration};

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
    /// Who may use this route: `"authenticated"`, `{ permission = "…" }` or `{ role = "…" }`
    /// (needs `[auth]`).
    #[serde(default)]
    #[schemars(with = "Option<RouteAuth>")]
    pub auth: Option<Spanned<RouteAuth>>,
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
