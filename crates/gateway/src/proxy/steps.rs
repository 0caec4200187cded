//! The steps of a request before and around the upstream call, in the order of
//! ARCHITECTURE.md: head checks, the server's rate limit, the auth endpoints, the route, the
//! route's body limit, its `auth` requirement and its rate limit, the cache, adaptive
//! concurrency, the call, the cache's fill, the static fallback.

use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::{Response, Version};
use sekisho_policy::concurrency::{Permit as ConcurrencyPermit, Sample};
use tokio::time::Instant;

use sekisho_auth::Auth;

use super::auth as auth_step;
use super::call::call_upstream;
use super::context::{ClientInfo, Exchange, Record};
use super::forwarding::{content_length, host_of, host_text, strip_port};
use crate::body::{ClientBody, ResponseBody};
use crate::cache::{Fetch, Lookup};
use crate::edge::GatewayError;
use crate::fallback::FallbackKind;
use crate::ratelimit::{self, KeySource, RateLimit};
use crate::router::{CompiledRoute, RouteQuery};
use crate::runtime::Runtime;

/// The steps of one request, in order: head checks (unless the connection's reader did them:
/// `head_checked`), the server's rate limit, the route, its body
/// limit and rate limit, the cache, adaptive concurrency; then the call to the upstream
/// ([`call_upstream`]), the cache's fill, and the static fallback.
///
/// The larger steps' futures (the call, the auth endpoints and requirement, the cache's
/// look-up and fill) are boxed where they are awaited: unboxed, this future would be as large
/// as the largest of them, on every request, and be copied whole into each future above it
/// (`handle`, the connection's service, hyper's dispatcher) as each is made. A box is one
/// allocation, and only on the paths that take the step.
pub(super) async fn run(
    runtime: &Runtime,
    auth: Option<&Auth>,
    exchange: &mut Exchange,
    parts: &mut http::request::Parts,
    body: ClientBody,
    head_checked: bool,
    body_length: Option<u64>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let started = exchange.started;
    if !head_checked {
        check_head(runtime, parts)?;
    }
    // The client's address behind trusted proxies, worked out once for both limits.
    let mut client_ip = None;
    if let Some(limit) = &runtime.rate_limit {
        let source = key_source(
            runtime,
            &exchange.client,
            &parts.headers,
            None,
            None,
            started,
            &mut client_ip,
        );
        apply_rate_limit(limit, &source, &mut exchange.record).await?;
    }
    if let Some(auth) = auth {
        let prefix = &auth.config().path_prefix;
        if let Some(endpoint) = auth_step::Endpoint::of(prefix, parts.uri.path()) {
            let ip = *client_ip.get_or_insert_with(|| {
                runtime
                    .trusted_proxies
                    .client_ip(exchange.client.remote.ip(), &parts.headers)
            });
            let began = crate::clock::now();
            let answer = crate::boxed::boxed(|| {
                auth_step::serve(
                    auth,
                    endpoint,
                    parts,
                    body,
                    ip,
                    runtime.listener.header_read_timeout,
                )
            })
            .await;
            exchange.record.auth = Some((endpoint.operation(), Some(began.elapsed())));
            return answer;
        }
    }
    exchange.host = host_of(&parts.headers, &parts.uri);
    let route = {
        // The host as routes match it (its port cut off), when one does.
        let host_without_port = exchange
            .host
            .as_ref()
            .filter(|_| runtime.router.matches_hosts())
            .map(|h| strip_port(host_text(h)));
        let query = RouteQuery {
            host: host_without_port,
            path: parts.uri.path(),
            method: &parts.method,
            headers: &parts.headers,
        };
        runtime
            .router
            .find(&query)
            .cloned()
            .ok_or_else(|| GatewayError::NoRoute {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
            })?
    };
    exchange.record.route = Some(Arc::clone(&route));
    // The length the connection's reader found (0: none), or the head's.
    if let Some(length) = body_length.or_else(|| content_length(&parts.headers)) {
        if length > route.max_body_bytes {
            return Err(GatewayError::PayloadTooLarge {
                limit: route.max_body_bytes,
            });
        }
    }
    // Authentication, between the route and its rate limit. Identity headers are the gateway's
    // to set: a client's copies never reach an upstream, on any route.
    auth_step::strip_identity(&mut parts.headers);
    let mut identity = None;
    if let Some(requirement) = &route.auth {
        let Some(auth) = auth else {
            return Err(GatewayError::AuthUnavailable(
                "the route asks for `auth` but authentication is not running".into(),
            ));
        };
        let peer = exchange.client.remote.ip();
        let mut took = None;
        let checked = crate::boxed::boxed(|| {
            auth_step::require(
                auth,
                requirement,
                &route.name,
                &mut parts.headers,
                |headers| runtime.trusted_proxies.client_ip(peer, headers),
                started,
                &mut took,
            )
        })
        .await;
        exchange.record.auth = Some(("validate", took));
        let checked = checked?;
        // Its headers: in the map when something before the upstream may read them, otherwise
        // written with the upstream request's head as it is sent (no map work per request).
        if identity_read_before_sending(&route) {
            auth_step::add_identity(&mut parts.headers, &checked);
        } else {
            exchange.identity = Some(Arc::clone(&checked));
        }
        identity = Some(checked);
    }
    if let Some(limit) = &route.rate_limit {
        let source = key_source(
            runtime,
            &exchange.client,
            &parts.headers,
            Some(&route.name),
            identity
                .as_deref()
                .map(|identity| identity.username.as_str()),
            started,
            &mut client_ip,
        );
        apply_rate_limit(limit, &source, &mut exchange.record).await?;
    }
    let deadline = started + route.timeout;
    let mut fetch = None;
    if let Some(cache) = &route.cache {
        match crate::boxed::boxed(|| cache.lookup(parts, deadline)).await {
            Lookup::Pass(status) => exchange.record.cache_status = Some(status),
            Lookup::Hit(response, status) => {
                exchange.record.cache_status = Some(status);
                return Ok(response);
            }
            Lookup::HitRefresh(response, status, refresh) => {
                exchange.record.cache_status = Some(status);
                spawn_refresh(&route, exchange, parts, refresh);
                return Ok(response);
            }
            Lookup::Fetch(miss) => fetch = Some(miss),
            Lookup::Refuse(error, status) => {
                exchange.record.cache_status = Some(status);
                return Err(error);
            }
        }
    }
    if let Some(limit) = &route.concurrency {
        match limit.try_acquire() {
            Ok(permit) => exchange.record.concurrency = Some(permit),
            Err(shed) => {
                return Err(GatewayError::Overloaded {
                    route: Arc::clone(&route.name),
                    limit: shed.limit,
                })
            }
        }
    }
    let result = crate::boxed::boxed(|| call_upstream(exchange, &route, parts, Some(body))).await;
    let result = match fetch {
        Some(fetch) => {
            let (result, status) = crate::boxed::boxed(|| fetch.finish(result)).await;
            exchange.record.cache_status = Some(status);
            result
        }
        None => result,
    };
    let Some(fallback) = route.fallback.as_ref() else {
        return result;
    };
    if !fallback.covers(&result) {
        return result;
    }
    match &fallback.answer {
        Some(answer) => {
            fallback.count(FallbackKind::Static);
            exchange.record.fallback = Some("static");
            Ok(answer.response())
        }
        None => result,
    }
}

/// Refreshes a cached entry in the background (stale-while-revalidate, early refresh): the same
/// GET, without a body, under a deadline of its own.
fn spawn_refresh(
    route: &Arc<CompiledRoute>,
    exchange: &Exchange,
    parts: &http::request::Parts,
    refresh: Box<Fetch>,
) {
    let route = Arc::clone(route);
    let mut head = http::Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.version_mut() = parts.version;
    *head.headers_mut() = parts.headers.clone();
    let (head, ()) = head.into_parts();
    let mut background = Exchange::new(
        exchange.client.clone(),
        exchange.request_id.clone(),
        crate::clock::now(),
        &exchange.lag,
    );
    background.host = exchange.host.clone();
    tokio::spawn(async move {
        let mut head = head;
        let result = call_upstream(&mut background, &route, &mut head, None).await;
        let _ = refresh.finish(result).await;
    });
}

/// Tells the route's adaptive limit how the call went — an upstream answer is a latency sample,
/// a timeout a drop, anything else (a client error, a refusal by circuit or bulkhead) nothing —
/// and keeps its place taken until the response body is done.
///
/// The sample is the upstream's latency as the gateway can see it: from the moment the last
/// attempt was handed to the target's connection to the answer's head (not the route, cache
/// or bulkhead time before it), with the event loop's own scheduling delay (the request's
/// `own_delay`, as the circuit breaker gets it), so that a gateway saturated by its own work is
/// not read as a slow upstream.
pub(super) fn sample_concurrency(
    mut permit: ConcurrencyPermit,
    forwarded: &mut Result<Response<ResponseBody>, GatewayError>,
    exchange: &Exchange,
) {
    let (outcome, started) = (&exchange.record, exchange.started);
    if outcome.timed_out {
        permit.sample(
            Sample::Dropped,
            started.into_std(),
            crate::clock::now().into_std(),
        );
    } else if let (Ok(_), None, Some(answered)) = (&*forwarded, outcome.fallback, outcome.answered)
    {
        let sent = outcome.sent.unwrap_or(started);
        permit.sample_latency(
            Sample::Success,
            answered.saturating_duration_since(sent),
            exchange.own_delay_now(),
            answered.into_std(),
        );
    }
    if let Ok(response) = forwarded {
        response.body_mut().hold_concurrency(permit);
    }
}

/// Checks one rate limit and keeps the tighter decision for the response's `RateLimit-*` fields.
async fn apply_rate_limit(
    limit: &RateLimit,
    source: &KeySource<'_>,
    record: &mut Record,
) -> Result<(), GatewayError> {
    let checked = limit.check(source).await;
    let decision = match &checked {
        Ok(decision) => *decision,
        Err(GatewayError::RateLimited { decision, .. }) => *decision,
        Err(_) => return checked.map(|_| ()),
    };
    record.rate = Some(ratelimit::tighter(record.rate, decision));
    checked.map(|_| ())
}

/// What a rate limit keys a request by; `client_ip` keeps the client's address once known.
fn key_source<'a>(
    runtime: &Runtime,
    client: &ClientInfo,
    headers: &'a HeaderMap,
    route: Option<&'a str>,
    user: Option<&'a str>,
    started: Instant,
    client_ip: &mut Option<std::net::IpAddr>,
) -> KeySource<'a> {
    KeySource {
        client_ip: *client_ip.get_or_insert_with(|| {
            runtime
                .trusted_proxies
                .client_ip(client.remote.ip(), headers)
        }),
        headers,
        route,
        user,
        at: started,
    }
}

/// Header size and request smuggling checks, before anything is routed.
fn check_head(runtime: &Runtime, parts: &http::request::Parts) -> Result<(), GatewayError> {
    let limit = runtime.listener.max_header_bytes;
    // The request line and each "name: value\r\n", as they were on the wire for HTTP/1.1.
    let mut size = parts.method.as_str().len() as u64
        + parts.uri.path_and_query().map_or(1, |pq| pq.as_str().len()) as u64
        + 12;
    for (name, value) in &parts.headers {
        size += (name.as_str().len() + value.len() + 4) as u64;
    }
    if size > limit {
        return Err(GatewayError::HeadersTooLarge { limit });
    }
    if parts.version <= Version::HTTP_11 {
        let transfer_encoding = parts.headers.contains_key(header::TRANSFER_ENCODING);
        let mut lengths = parts.headers.get_all(header::CONTENT_LENGTH).iter();
        let first_length = lengths.next();
        if transfer_encoding && first_length.is_some() {
            return Err(GatewayError::BadRequest(
                "both Transfer-Encoding and Content-Length are set".to_owned(),
            ));
        }
        if let Some(first) = first_length {
            if lengths.any(|other| other != first) || content_length(&parts.headers).is_none() {
                return Err(GatewayError::BadRequest(
                    "Content-Length is not one whole number".to_owned(),
                ));
            }
        }
    }
    Ok(())
}

/// Whether a step between the route's `auth` and the upstream may read the identity headers
/// from the request's map: the cache (its key and `Vary`), the route's header rules, a
/// rate-limit key or a balancing key naming one of them.
fn identity_read_before_sending(route: &CompiledRoute) -> bool {
    route.cache.is_some()
        || route.headers.request_names(auth_step::is_identity_header)
        || route
            .rate_limit
            .as_ref()
            .is_some_and(|limit| limit.reads_header(auth_step::is_identity_header))
        || matches!(&route.upstream.hash_key, Some(sekisho_config::HashKey::Header(name)) if auth_step::is_identity_header(name))
}
