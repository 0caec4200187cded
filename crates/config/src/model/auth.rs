//! `[auth]`: edge authentication (CONTRACT.md "Authentication, sessions and users"), and a
//! route's `auth` requirement.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::duration::{ConfigDuration, NonZeroDuration};

/// `[auth]`: users, sessions and the endpoints under `path_prefix` on the traffic listener.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Where login, refresh, logout and me live on the traffic listener.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// local (the database; survives restarts) | redis (needs `store.redis`; shared by all
    /// instances).
    #[serde(default)]
    pub session_store: SessionStore,
    /// An access token's life.
    #[serde(default = "default_access_ttl")]
    pub access_ttl: NonZeroDuration,
    /// A refresh token's life (idle); each refresh rotates it.
    #[serde(default = "default_refresh_ttl")]
    pub refresh_ttl: NonZeroDuration,
    /// No session outlives this, however often refreshed.
    #[serde(default = "default_session_absolute")]
    pub session_absolute: NonZeroDuration,
    /// Login also sets a `__Host-` session cookie (HttpOnly, Secure, SameSite=Strict).
    #[serde(default)]
    pub cookie: bool,
    /// argon2id's cost; default: OWASP's minimum.
    #[serde(default)]
    pub argon2: Argon2Params,
    /// Password hashes computed at once; 0 = one per core.
    #[serde(default)]
    pub max_concurrent_hashes: u32,
    /// Logins waiting for a hashing slot beyond `max_concurrent_hashes`; 0 = 4 per slot; past
    /// it 503 `OVERLOADED` (extension).
    #[serde(default)]
    pub hash_queue: u32,
    /// Failed logins allowed per account and per client address.
    #[serde(default)]
    pub lockout: Lockout,
    /// With `store.redis`: how often the identities of users active in the last hour are
    /// written to the shared (Redis) identity cache; `"0s"` = never (extension).
    #[serde(default = "default_warm_interval")]
    pub warm_interval: ConfigDuration,
    /// With `store.redis`: the prefix of every Redis key and channel of authentication
    /// (sessions, identities, invalidations), so that deployments sharing a Redis keep apart
    /// (extension).
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            path_prefix: default_path_prefix(),
            session_store: SessionStore::default(),
            access_ttl: default_access_ttl(),
            refresh_ttl: default_refresh_ttl(),
            session_absolute: default_session_absolute(),
            cookie: false,
            argon2: Argon2Params::default(),
            max_concurrent_hashes: 0,
            hash_queue: 0,
            lockout: Lockout::default(),
            warm_interval: default_warm_interval(),
            redis_prefix: default_redis_prefix(),
        }
    }
}

/// Where sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStore {
    /// The database (SQLite or PostgreSQL): survives a restart.
    #[default]
    Local,
    /// Redis (`store.redis`): every instance sees every session and every logout at once.
    Redis,
}

/// `[auth] argon2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Argon2Params {
    /// Memory per hash, in KiB (at least 8 × parallelism).
    #[serde(default = "default_memory_kib")]
    pub memory_kib: u32,
    /// Passes over the memory (at least 1).
    #[serde(default = "default_iterations")]
    pub iterations: u32,
    /// Lanes (at least 1).
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self {
            memory_kib: default_memory_kib(),
            iterations: default_iterations(),
            parallelism: default_parallelism(),
        }
    }
}

/// `[auth] lockout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lockout {
    /// Failures within `window` that lock the account (or the client address); 0 = never.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// The window failures are counted in.
    #[serde(default = "default_lockout_window")]
    pub window: NonZeroDuration,
    /// How long a lockout lasts.
    #[serde(default = "default_lockout_duration")]
    pub duration: NonZeroDuration,
}

impl Default for Lockout {
    fn default() -> Self {
        Self {
            max_failures: default_max_failures(),
            window: default_lockout_window(),
            duration: default_lockout_duration(),
        }
    }
}

/// A route's `auth`: `"authenticated"`, `{ permission = "…" }` or `{ role = "…" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuth {
    /// Any valid session.
    Authenticated,
    /// A session whose user has this permission (through one of its roles).
    Permission(String),
    /// A session whose user has this role.
    Role(String),
}

fn default_path_prefix() -> String {
    "/auth".to_owned()
}
fn default_access_ttl() -> NonZeroDuration {
    NonZeroDuration::from_millis(5 * 60_000)
}
fn default_refresh_ttl() -> NonZeroDuration {
    NonZeroDuration::from_millis(7 * 86_400_000)
}
fn default_session_absolute() -> NonZeroDuration {
    NonZeroDuration::from_millis(12 * 3_600_000)
}
fn default_redis_prefix() -> String {
    "sekisho:auth:".to_owned()
}
fn default_warm_interval() -> ConfigDuration {
    ConfigDuration::from_millis(15 * 60_000)
}
fn default_memory_kib() -> u32 {
    19_456
}
fn default_iterations() -> u32 {
    2
}
fn default_parallelism() -> u32 {
    1
}
fn default_max_failures() -> u32 {
    5
}
fn default_lockout_window() -> NonZeroDuration {
    NonZeroDuration::from_millis(5 * 60_000)
}
fn default_lockout_duration() -> NonZeroDuration {
    NonZeroDuration::from_millis(15 * 60_000)
}

impl<'de> Deserialize<'de> for RouteAuth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RouteAuthVisitor;
        const EXPECTED: &str =
            "expected \"authenticated\", { permission = \"…\" } or { role = \"…\" }";
        impl<'de> Visitor<'de> for RouteAuthVisitor {
            type Value = RouteAuth;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<RouteAuth, E> {
                match value {
                    "authenticated" => Ok(RouteAuth::Authenticated),
                    other => Err(E::custom(format!(
                        "`{other}` is not an auth requirement: {EXPECTED}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RouteAuth, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(format!("an empty table: {EXPECTED}")));
                };
                let value: String = map.next_value()?;
                if value.trim().is_empty() {
                    return Err(de::Error::custom(format!("`{key}` must not be empty")));
                }
                let requirement = match key.as_str() {
                    "permission" => RouteAuth::Permission(value),
                    "role" => RouteAuth::Role(value),
                    other => {
                        return Err(de::Error::custom(format!(
                            "unknown key `{other}`: {EXPECTED}"
                        )))
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "`{extra}` next to `{key}`: name one permission or one role"
                    )));
                }
                Ok(requirement)
            }
        }
        deserializer.deserialize_any(RouteAuthVisitor)
    }
}

impl JsonSchema for RouteAuth {
    fn schema_name() -> String {
        "RouteAuth".to_owned()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        serde_json::from_value(serde_json::json!({
            "oneOf": [
                { "type": "string", "enum": ["authenticated"] },
                {
                    "type": "object",
                    "properties": { "permission": { "type": "string" } },
                    "required": ["permission"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "role": { "type": "string" } },
                    "required": ["role"],
                    "additionalProperties": false
                }
            ]
        }))
        .unwrap_or(schemars::schema::Schema::Bool(true))
    }
}
