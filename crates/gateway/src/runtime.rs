//! One generation of the config, compiled for serving, and its atomic replacement.
//!
//! A request loads the current [`Runtime`] once, at its start, and keeps that `Arc` to its end:
//! a reload swaps the pointer for new requests while requests in flight finish on the config they
//! started with. Building a runtime is all-or-nothing; a config that fails to build never
//! replaces the one in force.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sekisho_config::{ConcurrencyAlgorithm, Config};
use sekisho_policy::concurrency::{AdaptiveLimit, Algorithm, Settings as ConcurrencySettings};
use tokio_rustls::TlsAcceptor;

use crate::client_ip::TrustedProxies;
use crate::fallback::Fallback;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;
use crate::registry::StateRegistry;
use crate::retry::RetryPolicy;
use crate::router::{CompiledRoute, Router};
use crate::upstream::{ClientCache, UpstreamGroup};

/// Settings of the traffic listener that apply per connection or per request.
#[derive(Debug, Clone)]
pub(crate) struct ListenerSettings {
    /// Write an access log line per request.
    pub access_log: bool,
    /// Request line plus headers, at most.
    pub max_header_bytes: u64,
    /// Header fields in a request head, at most.
    pub max_header_count: u32,
    /// Slowloris guard.
    pub header_read_timeout: Duration,
    /// Keep-alive idle limit.
    pub idle_timeout: Duration,
    /// HTTP/1.1's common exchanges on the owned codec (`h1`).
    pub owned_http1: bool,
}

/// A compiled config generation.
pub(crate) struct Runtime {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Routes.
    pub router: Router,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<UpstreamGroup>>,
    /// Listener settings.
    pub listener: ListenerSettings,
    /// TLS, when the listener has it.
    pub tls: Option<TlsAcceptor>,
    /// When this generation was built.
    pub loaded_at: SystemTime,
    /// 1 for the config at start, +1 per successful reload.
    pub generation: u64,
    /// The server-wide rate limit, checked before routing.
    pub rate_limit: Option<RateLimit>,
    /// Whose forwarding headers are believed when finding the client's address.
    pub trusted_proxies: TrustedProxies,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("generation", &self.generation)
            .field("routes", &self.router.routes().len())
            .field("upstreams", &self.upstreams.len())
            .finish()
    }
}

pub use crate::build_error::BuildError;

impl Runtime {
    /// Whether a route may shed a request from its head alone (`proxy::early`): one sheds
    /// first, and nothing before routing needs the request (no access log, no server-wide
    /// rate limit).
    pub(crate) fn sheds_from_head(&self) -> bool {
        !self.listener.access_log && self.rate_limit.is_none() && self.router.sheds_early()
    }

    /// Every rate limit in force: the server's, then each route's.
    pub(crate) fn rate_limits(&self) -> impl Iterator<Item = &RateLimit> {
        self.rate_limit.iter().chain(
            self.router
                .routes()
                .iter()
                .filter_map(|route| route.rate_limit.as_ref()),
        )
    }

    /// Compiles `config`; `base_dir` resolves relative TLS paths.
    pub(crate) fn build(
        config: Arc<Config>,
        base_dir: Option<&Path>,
        clients: &ClientCache,
        states: &StateRegistry,
        metrics: &Metrics,
        generation: u64,
    ) -> Result<Self, BuildError> {
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            let name = name.get_ref();
            let group = UpstreamGroup::new(
                name,
                upstream,
                clients.client_for(upstream),
                metrics.upstream_connect_errors(name),
                &states.upstreams,
            )
            .map_err(|e| BuildError(format!("upstream `{name}`: {e}")))?;
            upstreams.insert(name.clone(), Arc::new(group));
        }
        let mut routes = Vec::new();
        for route in &config.routes {
            let route = route.get_ref();
            let upstream = upstreams
                .get(route.upstream.get_ref().as_str())
                .cloned()
                .ok_or_else(|| {
                    BuildError(format!(
                        "route `{}` names unknown upstream `{}`",
                        route.name,
                        route.upstream.get_ref()
                    ))
                })?;
            let route_metrics = metrics.route(&route.name, &upstream.name);
            let retry = route.retry.as_ref().map(|retry| {
                RetryPolicy::new(
                    retry,
                    states.retry_budget(&route.name, retry),
                    metrics.route_retries(&route.name),
                )
            });
            let fallback = route.fallback.as_ref().map(|fallback| {
                let fallback = fallback.get_ref();
                let alternate = fallback
                    .upstream
                    .as_ref()
                    .and_then(|name| upstreams.get(name.get_ref().as_str()).cloned());
                Fallback::new(fallback, alternate, metrics.route_fallbacks(&route.name))
            });
            let mut compiled = CompiledRoute::new(
                route,
                upstream,
                config.server.max_body_bytes.0,
                route_metrics,
                retry,
                fallback,
            );
            // The route's own settings, or the server's; `enabled = false` turns it off.
            compiled.concurrency = route
                .adaptive_concurrency
                .as_ref()
                .or(config.server.adaptive_concurrency.as_ref())
                .map(|spanned| spanned.get_ref())
                .filter(|settings| settings.enabled)
                .map(|settings| states.adaptive_limit(&route.name, concurrency_settings(settings)));
            compiled.rate_limit = route
                .rate_limit
                .as_ref()
                .map(|limit| rate_limit(&route.name, limit.get_ref(), &config, states, metrics));
            compiled.cache = route.cache.as_ref().map(|cache| {
                Arc::new(crate::cache::RouteCache::new(
                    states.cache_store(&config.store),
                    &route.name,
                    cache,
                    metrics.cache(&route.name),
                ))
            });
            routes.push(Arc::new(compiled));
        }
        let tls = match &config.server.tls {
            Some(tls) => Some(crate::tls::acceptor(tls.get_ref(), base_dir)?),
            None => None,
        };
        let server = &config.server;
        Ok(Self {
            listener: ListenerSettings {
                access_log: server.access_log,
                max_header_bytes: server.max_header_bytes.0,
                max_header_count: server.max_header_count.get(),
                owned_http1: server.owned_http1,
                header_read_timeout: server.header_read_timeout.get(),
                idle_timeout: server.idle_timeout.get(),
            },
            router: Router::new(routes),
            upstreams,
            tls,
            loaded_at: SystemTime::now(),
            generation,
            rate_limit: server
                .rate_limit
                .as_ref()
                .map(|limit| rate_limit("*", limit.get_ref(), &config, states, metrics)),
            trusted_proxies: TrustedProxies::new(
                server.trusted_proxies.iter().map(|p| p.get_ref().as_str()),
            ),
            config,
        })
    }
}

/// The policy's settings from `[server.adaptive_concurrency]` or `[routes.adaptive_concurrency]`.
fn concurrency_settings(config: &sekisho_config::AdaptiveConcurrency) -> ConcurrencySettings {
    ConcurrencySettings {
        algorithm: match config.algorithm {
            ConcurrencyAlgorithm::Gradient => Algorithm::Gradient {
                tolerance: config.tolerance,
                smoothing: config.smoothing.0,
            },
            ConcurrencyAlgorithm::Aimd => Algorithm::Aimd {
                backoff_ratio: config.backoff_ratio,
                timeout: config.timeout.get(),
            },
        },
        initial_limit: config.initial_limit.0,
        min_limit: config.min_limit.0,
        max_limit: config.max_limit.0,
        window: config.window.get(),
        min_samples: config.min_samples.0,
    }
}

impl Runtime {
    /// Each route's adaptive concurrency limit, for the metrics.
    pub(crate) fn adaptive_limits(&self) -> Vec<(Arc<str>, Arc<AdaptiveLimit>)> {
        self.router
            .routes()
            .iter()
            .filter_map(|route| {
                route
                    .concurrency
                    .as_ref()
                    .map(|limit| (Arc::clone(&route.name), Arc::clone(limit)))
            })
            .collect()
    }
}

/// The rate limit of `scope` (a route's name, or `*` for the server's), its in-process state and
/// Redis link kept across reloads.
fn rate_limit(
    scope: &str,
    config: &sekisho_config::RateLimit,
    whole: &Config,
    states: &StateRegistry,
    metrics: &Metrics,
) -> RateLimit {
    let store = match (config.backend, &whole.store.redis) {
        (sekisho_config::RateLimitBackend::Redis, Some(url)) => {
            Some(states.store_link(url, whole.store.redis_timeout.get()))
        }
        _ => None,
    };
    let local = states.local_rate_limiter(scope, crate::ratelimit::limit_of(config));
    RateLimit::new(scope, config, store, local, metrics.rate_limit(scope))
}
