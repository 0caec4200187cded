//! `[routes.cache]`: a route's response cache.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Bytes, Positive, Ratio};
use crate::duration::{ConfigDuration, NonZeroDuration};

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

fn default_cache_ttl() -> NonZeroDuration {
    NonZeroDuration::from_millis(60_000)
}
fn default_negative_ttl() -> ConfigDuration {
    ConfigDuration::from_millis(5_000)
}
fn default_cache_body() -> Bytes {
    Bytes(1024 * 1024)
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
