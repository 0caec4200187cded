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

use sekisho_config::Config;
use tokio_rustls::TlsAcceptor;

use crate::fallback::Fallback;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::router::{CompiledRoute, Router};
use crate::upstream::{ClientCache, StateRegistry, UpstreamGroup};

/// Settings of the traffic listener that apply per connection or per request.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Write an access log line per request.
    pub access_log: bool,
    /// Request line plus headers, at most.
    pub max_header_bytes: u64,
    /// Slowloris guard.
    pub header_read_timeout: Duration,
    /// Keep-alive idle limit.
    pub idle_timeout: Duration,
}

/// A compiled config generation.
pub struct Runtime {
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

/// Why a config could not be put in force (the config itself was valid).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

impl Runtime {
    /// Compiles `config`; `base_dir` resolves relative TLS paths.
    pub fn build(
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
                states,
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
            routes.push(Arc::new(CompiledRoute::new(
                route,
                upstream,
                config.server.max_body_bytes.0,
                route_metrics,
                retry,
                fallback,
            )));
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
                header_read_timeout: server.header_read_timeout.get(),
                idle_timeout: server.idle_timeout.get(),
            },
            router: Router::new(routes),
            upstreams,
            tls,
            loaded_at: SystemTime::now(),
            generation,
            config,
        })
    }
}
