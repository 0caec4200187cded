//! `[admin]`: the admin listener and the config file watch.

use schemars::JsonSchema;
use serde::Deserialize;

use super::SocketAddress;
use crate::duration::ConfigDuration;

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

fn default_admin_listen() -> SocketAddress {
    SocketAddress("127.0.0.1:9901".to_owned())
}
fn default_watch_interval() -> ConfigDuration {
    ConfigDuration::from_millis(1_000)
}
