//! How an upstream's targets are reached: the gateway's own HTTP/1.1 pools, or hyper-util's
//! client for h2c, shared across reloads by settings ([`ClientCache`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sekisho_config::{Upstream, UpstreamProtocol};
use tokio::time::Instant;

use crate::body::{RequestBody, UpstreamBody};
use crate::interim::InterimSink;
use crate::pool::{CallError, Http1Client, Http1Pool, Lease, OwnedHead};
use crate::sync::lock;

/// hyper-util's pooled client, for h2c targets (one multiplexed connection each).
pub(crate) type H2cClient = Client<HttpConnector, RequestBody>;

/// How an upstream's targets are reached, by protocol.
#[derive(Debug, Clone)]
pub(crate) enum UpstreamClient {
    /// HTTP/1.1: the gateway's own pools ([`crate::pool`]).
    Http1(Arc<Http1Client>),
    /// h2c (HTTP/2 without TLS, prior knowledge): hyper-util's client.
    H2c(Box<H2cClient>),
}

impl UpstreamClient {
    /// How one target is reached.
    pub(super) fn for_target(&self, authority: &Authority) -> TargetConn {
        match self {
            Self::Http1(client) => TargetConn::Http1(client.pool_for(authority)),
            Self::H2c(client) => {
                TargetConn::H2c(Box::new((H2cClient::clone(client), authority.clone())))
            }
        }
    }
}

/// How one target is reached.
#[derive(Debug)]
pub(crate) enum TargetConn {
    /// Through the target's pool of HTTP/1.1 connections.
    Http1(Arc<Http1Pool>),
    /// Through hyper-util's client, at this authority.
    H2c(Box<(H2cClient, Authority)>),
}

impl TargetConn {
    /// Open connections idle in the target's pool (HTTP/1.1).
    pub(crate) fn idle(&self) -> Option<usize> {
        match self {
            Self::Http1(pool) => Some(pool.idle()),
            Self::H2c(..) => None,
        }
    }

    /// Whether a request with `body` is written by the gateway's own client side
    /// ([`send_whole`](Self::send_whole)).
    pub(crate) fn writes_whole(&self, body: &RequestBody) -> bool {
        matches!(self, Self::Http1(_)) && crate::pool::written_whole(body)
    }

    /// Sends a request the gateway writes itself (HTTP/1.1 targets, when
    /// [`writes_whole`](Self::writes_whole)): `head` as written, `body` taken when a connection
    /// is in hand. The target's interim answers go to `interim`.
    pub(crate) async fn send_whole(
        &self,
        head: OwnedHead<'_>,
        body: &mut RequestBody,
        now: Instant,
        interim: Option<&InterimSink>,
    ) -> Result<(Response<UpstreamBody>, Option<Lease>), CallError> {
        match self {
            Self::Http1(pool) => pool
                .send_whole(head, body, now, interim)
                .await
                .map(|response| (response, None)),
            Self::H2c(_) => Err(CallError::Request(
                "an h2c target is reached through hyper's client".into(),
            )),
        }
    }

    /// Sends `request` (its URI the origin-form target) through hyper's client; the answer
    /// comes with the connection's lease (HTTP/1.1), to be kept until the body is done. The
    /// target's interim answers go to `interim`.
    pub(crate) async fn send(
        &self,
        mut request: Request<RequestBody>,
        now: Instant,
        interim: Option<&InterimSink>,
    ) -> Result<(Response<UpstreamBody>, Option<Lease>), CallError> {
        match self {
            Self::Http1(pool) => pool.send(request, now, interim).await,
            Self::H2c(h2c) => {
                if let Some(sink) = interim {
                    sink.attach(&mut request);
                }
                let (client, authority) = h2c.as_ref();
                let mut parts = request.uri().clone().into_parts();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = Some(authority.clone());
                *request.uri_mut() =
                    Uri::from_parts(parts).map_err(|e| CallError::Request(e.into()))?;
                match client.request(request).await {
                    Ok(response) => Ok((response.map(UpstreamBody::Hyper), None)),
                    Err(error) if error.is_connect() => Err(CallError::Connect(error.into())),
                    Err(error) => Err(CallError::Request(error.into())),
                }
            }
        }
    }
}

/// What makes two upstreams' clients interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    pool_max_idle: u32,
    pool_idle_timeout: Duration,
    max_connections_per_target: u32,
}

/// Clients by settings, kept across reloads.
#[derive(Debug, Default)]
pub(crate) struct ClientCache {
    clients: Mutex<HashMap<ClientKey, UpstreamClient>>,
    /// The event loops serving traffic, each with idle connections of its own (0 counts as 1).
    loops: usize,
}

impl ClientCache {
    /// Clients whose HTTP/1.1 pools keep idle connections per event loop, for `loops` loops.
    pub(crate) fn new(loops: usize) -> Self {
        Self {
            clients: Mutex::default(),
            loops,
        }
    }

    /// The client for `upstream`'s settings, reusing an existing one (and its pool) if any.
    pub(crate) fn client_for(&self, upstream: &Upstream) -> UpstreamClient {
        let key = ClientKey {
            protocol: upstream.protocol,
            connect_timeout: upstream.connect_timeout.get(),
            pool_max_idle: upstream.pool_max_idle_per_target,
            pool_idle_timeout: upstream.pool_idle_timeout.get(),
            max_connections_per_target: upstream.max_connections_per_target,
        };
        lock(&self.clients)
            .entry(key.clone())
            .or_insert_with(|| build_client(&key, self.loops))
            .clone()
    }
}

fn build_client(key: &ClientKey, loops: usize) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.enforce_http(true);
    if key.protocol == UpstreamProtocol::Http1 {
        return UpstreamClient::Http1(Http1Client::new(
            connector,
            key.pool_max_idle as usize,
            key.pool_idle_timeout,
            key.max_connections_per_target as usize,
            loops,
        ));
    }
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(key.pool_max_idle as usize)
        .pool_idle_timeout(key.pool_idle_timeout)
        .retry_canceled_requests(true)
        .set_host(false)
        .http2_only(true);
    UpstreamClient::H2c(Box::new(builder.build(connector)))
}
