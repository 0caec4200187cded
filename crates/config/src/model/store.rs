//! `[store]`: where shared and embedded state lives, and the in-process cache's bounds.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Bytes, Positive};

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

fn default_data_dir() -> String {
    "./data".to_owned()
}
fn default_cache_entries() -> Positive {
    Positive(10_000)
}
fn default_cache_bytes() -> Bytes {
    Bytes(64 * 1024 * 1024)
}
