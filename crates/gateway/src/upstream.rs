//! Upstreams: groups of targets, and the pooled clients that reach them.
//!
//! Pools belong to the gateway, not to a config generation: a reload that keeps an upstream's
//! connection settings finds the same [`UpstreamClient`] in the [`ClientCache`], so its
//! keep-alive connections to unchanged targets survive the reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use sekisho_config::{Upstream, UpstreamProtocol};
use sekisho_policy::balance::RoundRobin;

use crate::body::RequestBody;

/// The pooled HTTP client used to reach targets.
pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// What makes two upstreams' clients interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    pool_max_idle: u32,
    pool_idle_timeout: Duration,
}

/// Clients by settings, kept across reloads.
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<ClientKey, UpstreamClient>>,
}

impl ClientCache {
    /// The client for `upstream`'s settings, reusing an existing one (and its pool) if any.
    pub fn client_for(&self, upstream: &Upstream) -> UpstreamClient {
        let key = ClientKey {
            protocol: upstream.protocol,
            connect_timeout: upstream.connect_timeout.get(),
            pool_max_idle: upstream.pool_max_idle_per_target,
            pool_idle_timeout: upstream.pool_idle_timeout.get(),
        };
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clients
            .entry(key.clone())
            .or_insert_with(|| build_client(&key))
            .clone()
    }
}

fn build_client(key: &ClientKey) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(key.pool_max_idle as usize)
        .pool_idle_timeout(key.pool_idle_timeout)
        .retry_canceled_requests(true)
        .set_host(false);
    if key.protocol == UpstreamProtocol::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}

/// One target of an upstream.
#[derive(Debug)]
pub struct Target {
    /// As configured: "host:port".
    pub address: String,
    /// For request URIs.
    pub authority: Authority,
    /// Relative share.
    pub weight: u32,
    /// Takes traffic only during failover.
    pub backup: bool,
}

/// An upstream ready to serve.
#[derive(Debug)]
pub struct UpstreamGroup {
    /// The upstream's name.
    pub name: Arc<str>,
    /// Targets in config order.
    pub targets: Vec<Target>,
    primaries: Vec<usize>,
    round_robin: RoundRobin,
    /// The pooled client.
    pub client: UpstreamClient,
    /// Protocol to the targets.
    pub protocol: UpstreamProtocol,
    /// Counts failed connects.
    pub connect_errors: Counter,
}

impl UpstreamGroup {
    /// Builds the group; addresses were checked by the config.
    pub fn new(
        name: &str,
        upstream: &Upstream,
        client: UpstreamClient,
        connect_errors: Counter,
    ) -> Result<Self, String> {
        let mut targets = Vec::new();
        for target in upstream.targets.get_ref() {
            let authority: Authority = target
                .address
                .parse()
                .map_err(|e| format!("target `{}`: {e}", target.address))?;
            targets.push(Target {
                address: target.address.clone(),
                authority,
                weight: target.weight,
                backup: target.backup,
            });
        }
        let primaries = targets
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.backup)
            .map(|(i, _)| i)
            .collect();
        Ok(Self {
            name: Arc::from(name),
            targets,
            primaries,
            round_robin: RoundRobin::new(),
            client,
            protocol: upstream.protocol,
            connect_errors,
        })
    }

    /// The target for the next request, in turn over the primary targets.
    pub fn pick(&self) -> Option<&Target> {
        let index = self.round_robin.pick(self.primaries.len());
        self.primaries
            .get(index)
            .and_then(|&target| self.targets.get(target))
    }
}
