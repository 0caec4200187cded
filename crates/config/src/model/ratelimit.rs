//! `[routes.rate_limit]` and `[server.rate_limit]`: a rate limit's algorithm, key and backend.

use schemars::JsonSchema;
use serde::Deserialize;

use super::Positive;
use crate::duration::NonZeroDuration;

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

fn default_rate_key() -> String {
    "client_ip".to_owned()
}
fn default_one_u32() -> Positive {
    Positive(1)
}
