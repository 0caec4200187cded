//! `[store]`: where shared and embedded state lives, and the in-process cache's bounds.

use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::{Bytes, Positive};
use crate::duration::{format_duration, ConfigDuration, NonZeroDuration};

/// The longest `redis_timeout` taken: a rate-limit decision that waits longer for Redis would
/// hold its request past any sensible deadline.
const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(60);

/// `[store]`: shared state for running several instances side by side.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// Redis URL for state shared across instances.
    #[serde(default)]
    pub redis: Option<String>,
    /// Longest wait for each Redis call a rate-limit decision makes (above zero, at most 1m);
    /// past it the limit's `on_store_error` decides (extension).
    #[serde(default = "default_redis_timeout", deserialize_with = "redis_timeout")]
    #[schemars(with = "NonZeroDuration")]
    pub redis_timeout: NonZeroDuration,
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
    /// Backups the running gateway takes by itself, with their retention (extension).
    #[serde(default)]
    pub backup: Option<ScheduledBackup>,
}

/// `[store.backup]`: the running gateway writes a backup of the store into `dir` every
/// `interval` (unless one was recorded more recently, by any instance or `sekisho backup`) and
/// keeps the newest `keep` files there.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduledBackup {
    /// The directory the backups are written to (relative to the config file's directory).
    #[serde(deserialize_with = "backup_dir")]
    pub dir: String,
    /// How often a backup is taken.
    #[serde(default = "default_backup_interval")]
    #[schemars(with = "NonZeroDuration")]
    pub interval: NonZeroDuration,
    /// How many backups are kept in `dir` (the newest; older ones are removed).
    #[serde(default = "default_backup_keep")]
    pub keep: Positive,
}

/// Reads `dir`: not empty.
fn backup_dir<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let dir = String::deserialize(deserializer)?;
    if dir.trim().is_empty() {
        return Err(de::Error::custom(
            "must name the directory the backups are written to (e.g. \"./backups\")",
        ));
    }
    Ok(dir)
}

fn default_backup_interval() -> NonZeroDuration {
    NonZeroDuration(Duration::from_secs(24 * 3600))
}
fn default_backup_keep() -> Positive {
    Positive(7)
}

impl Default for Store {
    fn default() -> Self {
        Self {
            redis: None,
            redis_timeout: default_redis_timeout(),
            database: None,
            data_dir: default_data_dir(),
            cache_max_entries: default_cache_entries(),
            cache_max_bytes: default_cache_bytes(),
            backup: None,
        }
    }
}

fn default_redis_timeout() -> NonZeroDuration {
    NonZeroDuration::from_millis(50)
}
fn default_data_dir() -> String {
    "./data".to_owned()
}
fn default_cache_entries() -> Positive {
    Positive(10_000)
}
fn default_cache_bytes() -> Bytes {
    Bytes(64 * 1024 * 1024)
}

/// Reads `redis_timeout`: a duration above zero and at most [`MAX_REDIS_TIMEOUT`], refused at its
/// place otherwise.
fn redis_timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NonZeroDuration, D::Error> {
    let ConfigDuration(timeout) = ConfigDuration::deserialize(deserializer)?;
    if timeout.is_zero() || timeout > MAX_REDIS_TIMEOUT {
        return Err(de::Error::custom(format!(
            "must be greater than zero and at most {} (each Redis call of a rate-limit decision waits this long at most), not {}",
            format_duration(MAX_REDIS_TIMEOUT),
            format_duration(timeout)
        )));
    }
    Ok(NonZeroDuration(timeout))
}
