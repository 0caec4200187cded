//! `[routes.cache]`: a route's response cache.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Bytes, Positive, Ratio};
use crate::duration::{ConfigDuration, NonZeroDuration};

/// `[routes.cache]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// Targeted cache-control fields this cache obeys before `Cache-Control` (RFC 9213), in
    /// order, e.g. `["CDN-Cache-Control"]` for a gateway that acts as a CDN: the first present
    /// decides, and `Cache-Control` and `Expires` are then ignored. `Surrogate-Control` is read
    /// with its own syntax (`max-age=60+30`, `;sekisho` targets). Default: none.
    #[serde(default)]
    pub targeted: Vec<String>,
    /// Freshness forced on a 200/204 that carries none of its own (no `s-maxage`, `max-age` or
    /// `Expires`, and no heuristic freshness). Unset: only what the origin allows is stored.
    #[serde(default)]
    pub ttl: Option<NonZeroDuration>,
    /// Heuristic freshness (RFC 9111 §4.2.2) for a response without explicit freshness but with
    /// `Last-Modified`: `heuristic_fraction` of the time since then, at most `heuristic_max`.
    #[serde(default)]
    pub heuristic: bool,
    /// The share of the time since `Last-Modified` a heuristic freshness lasts.
    #[serde(default = "default_heuristic_fraction")]
    pub heuristic_fraction: Ratio,
    /// The longest heuristic freshness.
    #[serde(default = "default_heuristic_max")]
    pub heuristic_max: NonZeroDuration,
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
    /// With the Redis tier: how long an entry may stay in the in-process tier, i.e. how long an
    /// instance that missed a purge may serve an old copy (the Redis tier keeps the entry for
    /// its whole lifetime, and the instance takes it from there again). Without Redis it does
    /// not apply: an entry stays in process for its freshness. Default: no bound (extension).
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

fn default_heuristic_fraction() -> Ratio {
    Ratio(0.1)
}
fn default_heuristic_max() -> NonZeroDuration {
    NonZeroDuration::from_millis(86_400_000)
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
