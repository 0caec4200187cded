//! The typed configuration, one struct per TOML table of CONTRACT.md.
//!
//! Every struct refuses unknown keys, every value is checked as it is read (ranges, formats), and
//! every key but `server.listen`, an upstream's `targets` and a route's `upstream` has a default.
//! Cross-references (route → upstream, redis backends → `store.redis`) are checked afterwards in
//! `validate.rs`, with the span of the offending value kept through [`Spanned`].
//!
//! One file per section: [`Server`] (`server.rs`), [`Admin`] (`admin.rs`), [`Store`]
//! (`store.rs`), [`Upstream`] with its health checks, outlier detection, circuit breaker and
//! bulkhead (`upstream.rs`), [`Route`] with its headers, retries and fallback (`route.rs`),
//! [`RateLimit`] (`ratelimit.rs`), [`Cache`] (`cache.rs`) and [`Auth`] (`auth.rs`); the value types they share
//! ([`Positive`], [`Bytes`], [`Ratio`], …) are in `values.rs`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
pub use toml::Spanned;

mod admin;
mod alerts;
mod auth;
mod cache;
mod ratelimit;
mod route;
mod server;
mod store;
mod upstream;
mod values;

pub use admin::*;
pub use alerts::*;
pub use auth::*;
pub use cache::*;
pub use ratelimit::*;
pub use route::*;
pub use server::*;
pub use store::*;
pub use upstream::*;
pub use values::*;

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
    /// How often the gateway looks at itself (vitals, probes, rules).
    #[serde(default)]
    pub monitor: Monitor,
    /// Alert rules, receivers and the alert manager's timing.
    #[serde(default)]
    pub alerts: Alerts,
    /// Edge authentication: users, sessions, the login endpoints; absent: none, and no route
    /// may ask for `auth`.
    #[serde(default)]
    #[schemars(with = "Option<Auth>")]
    pub auth: Option<Spanned<Auth>>,
}

fn default_true() -> bool {
    true
}
