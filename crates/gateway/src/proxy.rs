//! The request's path through the gateway: limits, route, target, forward, answer.
//!
//! [`handle`] never fails: whatever goes wrong becomes a [`GatewayError`], which the edge turns
//! into the contract's JSON. It records metrics and writes the access log line once the response
//! head is known.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{RequestBody, ResponseBody};
use crate::edge::{error_response, GatewayError};
use crate::router::{CompiledRoute, RouteQuery};
use crate::runtime::Runtime;
use crate::upstream::{CallOutcome, Circuit, UpstreamGroup};
use crate::Shared;
use sekisho_config::HashKey;
use sekisho_policy::breaker::{Outcome as BreakerOutcome, Permit};

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
fn hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
    ]
}

/// What the gateway knows about the client connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The peer's IP as text, formatted once per connection.
    ip_text: Arc<str>,
    /// The peer's `for=` node of a `Forwarded` element (RFC 7239 quoting), once per connection.
    forwarded_node: Arc<str>,
}

impl ClientInfo {
    /// Describes a client connection.
    pub fn new(remote: SocketAddr, tls: bool) -> Self {
        let ip = remote.ip();
        let forwarded_node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Self {
            remote,
            tls,
            ip_text: Arc::from(ip.to_string()),
            forwarded_node: Arc::from(forwarded_node),
        }
    }
}

/// A request id of 32 hex characters (128 random bits).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    let random = fastrand::u128(..);
    for (index, byte) in text.iter_mut().enumerate() {
        *byte = HEX[((random >> (index * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Keeps a client's id when it is sane (visible ASCII, ≤ 128 bytes), otherwise makes one.
fn request_id_of(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            id.clone()
        }
        _ => new_request_id(),
    }
}

/// What happened, for metrics and the access log.
struct Outcome {
    route: Option<Arc<CompiledRoute>>,
    target: Option<String>,
    error: Option<GatewayError>,
    /// When the upstream's answer head arrived (one clock read serves the latency estimate and
    /// the request metrics).
    answered: Option<Instant>,
}

/// Serves one request.
pub(crate) async fn handle(
    shared: &Shared,
    client: ClientInfo,
    request: Request<Incoming>,
    ambiguous_length: bool,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let runtime = shared.runtime.load_full();
    let request_id = request_id_of(request.headers());
    let access = runtime.listener.access_log.then(|| AccessInfo {
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
        version: request.version(),
    });
    let mut outcome = Outcome {
        route: None,
        target: None,
        error: None,
        answered: None,
    };
    let forwarded = if ambiguous_length {
        Err(GatewayError::BadRequest(
            "both Transfer-Encoding and Content-Length are set".to_owned(),
        ))
    } else {
        forward(
            &runtime,
            &client,
            request,
            &request_id,
            started,
            &mut outcome,
        )
        .await
    };
    let mut response = match forwarded {
        Ok(response) => response,
        Err(error) => {
            let response = error_response(&error, &request_id);
            outcome.error = Some(error);
            response
        }
    };
    let status = response.status().as_u16();
    response
        .headers_mut()
        .insert(&X_REQUEST_ID, request_id.clone());
    let elapsed = match outcome.answered {
        Some(answered) => answered.saturating_duration_since(started),
        None => started.elapsed(),
    };
    match &outcome.route {
        Some(route) => route.metrics.record(status, elapsed.as_secs_f64()),
        None => shared
            .unrouted_metrics
            .record(status, elapsed.as_secs_f64()),
    }
    if let Some(access) = access {
        access.log(&client, status, elapsed, &request_id, &outcome);
    }
    response
}

async fn forward(
    runtime: &Runtime,
    client: &ClientInfo,
    request: Request<Incoming>,
    request_id: &HeaderValue,
    started: Instant,
    outcome: &mut Outcome,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (mut parts, body) = request.into_parts();
    check_head(runtime, &parts)?;
    let original_host = host_of(&parts.headers, &parts.uri);
    let route = {
        let host_without_port = original_host.as_deref().map(strip_port);
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
    outcome.route = Some(Arc::clone(&route));
    if let Some(length) = content_length(&parts.headers) {
        if length > route.max_body_bytes {
            return Err(GatewayError::PayloadTooLarge {
                limit: route.max_body_bytes,
            });
        }
    }
    let upstream = &route.upstream;
    // The circuit first: an open one answers at once, before any work for the upstream.
    let mut circuit = CircuitCall::enter(upstream, started)?;
    // Then a slot of the upstream's bulkhead, held until the response body is done. A refusal
    // gives the circuit permit back: a full bulkhead says nothing about the upstream's health.
    let slot = match &upstream.bulkhead {
        Some(bulkhead) => {
            Some(
                bulkhead
                    .acquire()
                    .await
                    .map_err(|_| GatewayError::BulkheadFull {
                        upstream: upstream.name.clone(),
                        max_concurrent: bulkhead.usage().max_concurrent,
                    })?,
            )
        }
        None => None,
    };
    let key = upstream
        .hash_key
        .as_ref()
        .and_then(|key| request_key(key, client, &parts.headers, &parts.uri));

    // The request as the upstream sees it, but for the target's authority.
    let path = route.upstream_path(parts.uri.path());
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let path_and_query = http::uri::PathAndQuery::try_from(path_and_query)
        .map_err(|e| GatewayError::BadRequest(format!("invalid request target: {e}")))?;
    parts.version = match upstream.protocol {
        sekisho_config::UpstreamProtocol::Http1 => Version::HTTP_11,
        sekisho_config::UpstreamProtocol::H2c => Version::HTTP_2,
    };
    let headers = &mut parts.headers;
    remove_hop_by_hop(headers);
    add_forwarding_headers(headers, client, original_host.as_deref());
    if !headers.contains_key(header::HOST) {
        if let Some(host) = original_host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            headers.insert(header::HOST, host);
        }
    }
    headers.insert(&X_REQUEST_ID, request_id.clone());
    for name in &route.headers.request_remove {
        headers.remove(name);
    }
    for (name, value) in &route.headers.request_set {
        headers.insert(name, value.clone());
    }
    parts.extensions.clear();
    let (mut body, claim) = RequestBody::new(body, route.max_body_bytes);

    // One deadline covers every try, the response head and the streamed body.
    let deadline = started + route.timeout;
    let mut sleep: Pin<Box<tokio::time::Sleep>> = Box::pin(tokio::time::sleep_until(deadline));
    // Targets whose connect failed; a connect failure is retried on another target (the request
    // was not sent, so this is safe for any method) up to MAX_CONNECT_TRIES in all.
    let mut failed_connects: Vec<usize> = Vec::new();
    let mut last_connect_error: Option<GatewayError> = None;
    loop {
        let now = if failed_connects.is_empty() {
            started
        } else {
            Instant::now()
        };
        let target_index = match upstream.pick(key, now, &failed_connects) {
            Ok(target_index) => target_index,
            // Nothing left to try: the last connect error says more than "no healthy target".
            Err(_) => {
                if last_connect_error.is_some() {
                    circuit.finish(CallOutcome::ConnectError, started, Instant::now());
                }
                return Err(last_connect_error.take().unwrap_or_else(|| {
                    GatewayError::NoHealthyUpstream {
                        upstream: upstream.name.clone(),
                    }
                }));
            }
        };
        let target = &upstream.targets[target_index];
        outcome.target = Some(target.address.clone());
        let may_retry = failed_connects.len() + 1 < MAX_CONNECT_TRIES
            && failed_connects.len() + 1 < upstream.targets.len();
        // A head that may be needed again is copied; the last try takes it (an empty head is
        // left behind, which costs no allocation).
        let mut head = if may_retry {
            parts.clone()
        } else {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        head.uri = Uri::builder()
            .scheme("http")
            .authority(target.authority.clone())
            .path_and_query(path_and_query.clone())
            .build()
            .map_err(|e| GatewayError::BadRequest(format!("invalid request target: {e}")))?;
        let in_flight = upstream.begin(target_index);
        let call = upstream.client.request(Request::from_parts(head, body));
        let result = tokio::select! {
            biased;
            result = call => result,
            () = sleep.as_mut() => {
                let timed_out = Instant::now();
                upstream.record(target_index, CallOutcome::Timeout, timed_out.saturating_duration_since(now), timed_out);
                circuit.finish(CallOutcome::Timeout, started, timed_out);
                return Err(GatewayError::UpstreamTimeout {
                    upstream: upstream.name.clone(),
                    timeout: route.timeout,
                });
            }
        };
        match result {
            Ok(upstream_response) => {
                let (mut parts, response_body) = upstream_response.into_parts();
                let answered = Instant::now();
                outcome.answered = Some(answered);
                let answer = CallOutcome::Status(parts.status.as_u16());
                upstream.record(
                    target_index,
                    answer,
                    answered.saturating_duration_since(now),
                    answered,
                );
                circuit.finish(answer, started, answered);
                remove_hop_by_hop(&mut parts.headers);
                for name in &route.headers.response_remove {
                    parts.headers.remove(name);
                }
                for (name, value) in &route.headers.response_set {
                    parts.headers.insert(name, value.clone());
                }
                let mut body = ResponseBody::upstream(response_body, Some(sleep), in_flight);
                body.hold_slot(slot);
                return Ok(Response::from_parts(parts, body));
            }
            Err(error) => {
                let failed_at = Instant::now();
                let error = GatewayError::from_upstream_call(&upstream.name, error);
                let outcome = match &error {
                    GatewayError::UpstreamConnect { .. } => Some(CallOutcome::ConnectError),
                    GatewayError::UpstreamFailed { .. } => Some(CallOutcome::Broken),
                    // The client's body was at fault, not the target.
                    _ => None,
                };
                if let Some(call_outcome) = outcome {
                    upstream.record(
                        target_index,
                        call_outcome,
                        failed_at.saturating_duration_since(now),
                        failed_at,
                    );
                }
                let Some(call_outcome) = outcome else {
                    // The client's fault: the circuit does not judge it (the permit is given back).
                    return Err(error);
                };
                if call_outcome != CallOutcome::ConnectError {
                    circuit.finish(call_outcome, started, failed_at);
                    return Err(error);
                }
                upstream.connect_errors.inc();
                match claim.reclaim() {
                    Some(again) if may_retry => {
                        tracing::debug!(upstream = %upstream.name, target = %target.address, "connect failed; trying another target");
                        failed_connects.push(target_index);
                        last_connect_error = Some(error);
                        body = again;
                    }
                    _ => {
                        circuit.finish(call_outcome, started, failed_at);
                        return Err(error);
                    }
                }
            }
        }
    }
}

/// A call admitted by the upstream's circuit breaker: its outcome is recorded once, and a call
/// that never reached the upstream (no target, the client's fault) is given back on drop.
struct CircuitCall<'a> {
    circuit: Option<&'a Circuit>,
    permit: Option<Permit>,
}

impl<'a> CircuitCall<'a> {
    /// Leave from `upstream`'s breaker (always, without one); an open circuit is
    /// `CIRCUIT_OPEN` with the time until it lets a probe through.
    fn enter(upstream: &'a UpstreamGroup, now: Instant) -> Result<Self, GatewayError> {
        let Some(circuit) = &upstream.circuit else {
            return Ok(Self {
                circuit: None,
                permit: None,
            });
        };
        match circuit.breaker.try_acquire(now.into_std()) {
            Ok(permit) => Ok(Self {
                circuit: Some(circuit),
                permit: Some(permit),
            }),
            Err(rejected) => Err(GatewayError::CircuitOpen {
                upstream: upstream.name.clone(),
                retry_after: rejected.retry_after,
            }),
        }
    }

    /// Records how the call ended: a failure status, a timeout, a failed connect or a broken
    /// answer counts as failed; its duration runs from the request's start.
    fn finish(&mut self, outcome: CallOutcome, started: Instant, at: Instant) {
        if let (Some(circuit), Some(permit)) = (self.circuit, self.permit.take()) {
            let failed = match outcome {
                CallOutcome::Status(status) => circuit.failure_statuses.contains(&status),
                _ => true,
            };
            circuit.breaker.record(
                permit,
                BreakerOutcome {
                    failed,
                    duration: at.saturating_duration_since(started),
                },
                at.into_std(),
            );
        }
    }
}

impl Drop for CircuitCall<'_> {
    fn drop(&mut self) {
        if let (Some(circuit), Some(permit)) = (self.circuit, self.permit.take()) {
            circuit.breaker.cancel(permit);
        }
    }
}

/// Tries of one request when connects fail: the first target and up to two others.
const MAX_CONNECT_TRIES: usize = 3;

/// The request's balancing key, hashed: the client IP, or a header, cookie or query parameter.
fn request_key(key: &HashKey, client: &ClientInfo, headers: &HeaderMap, uri: &Uri) -> Option<u64> {
    let bytes: &[u8] = match key {
        HashKey::ClientIp => client.ip_text.as_bytes(),
        HashKey::Header(name) => headers.get(name)?.as_bytes(),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then_some(value)
            })?
            .as_bytes(),
        HashKey::Query(name) => uri
            .query()?
            .split('&')
            .find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then_some(value)
            })?
            .as_bytes(),
    };
    Some(sekisho_policy::balance::hash_key(bytes))
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

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn host_of(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        return Some(host.to_owned());
    }
    uri.authority().map(|a| a.as_str().to_owned())
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present is cheaper than hashing eight absent ones.
    let hop = hop_by_hop();
    if !headers.keys().any(|name| hop.contains(&name)) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION).cloned() {
        if let Ok(listed) = connection.to_str() {
            for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in hop {
        headers.remove(name);
    }
}

fn add_forwarding_headers(headers: &mut HeaderMap, client: &ClientInfo, host: Option<&str>) {
    let proto = if client.tls { "https" } else { "http" };
    let ip_text = &*client.ip_text;
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => {
            let prior: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            format!("{}, {ip_text}", prior.join(", "))
        }
        _ => ip_text.to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(&X_FORWARDED_HOST, host);
    }
    // RFC 7239: IPv6 addresses are quoted in brackets, and so is a host with a port.
    let mut element = format!("for={};proto={proto}", client.forwarded_node);
    if let Some(host) = host {
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            element.push_str(&format!(";host=\"{host}\""));
        }
    }
    let combined = match headers.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {element}"),
        _ => element,
    };
    if let Ok(value) = HeaderValue::from_str(&combined) {
        headers.insert(&FORWARDED, value);
    }
}

struct AccessInfo {
    method: http::Method,
    path: String,
    version: Version,
}

impl AccessInfo {
    fn log(
        self,
        client: &ClientInfo,
        status: u16,
        elapsed: std::time::Duration,
        request_id: &HeaderValue,
        outcome: &Outcome,
    ) {
        let route = outcome.route.as_ref().map(|r| &*r.name).unwrap_or("");
        let upstream = outcome
            .route
            .as_ref()
            .map(|r| &*r.upstream.name)
            .unwrap_or("");
        let error_code = outcome.error.as_ref().map(|e| e.code()).unwrap_or("");
        let error = outcome
            .error
            .as_ref()
            .map(|e| e.detail())
            .unwrap_or_default();
        tracing::info!(
            target: "sekisho::access",
            method = %self.method,
            path = %self.path,
            version = ?self.version,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            route,
            upstream,
            target_address = outcome.target.as_deref().unwrap_or(""),
            client = %client.remote.ip(),
            request_id = request_id.to_str().unwrap_or(""),
            error_code,
            error = %error,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_headers_append_to_what_came_before() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.insert(&FORWARDED, HeaderValue::from_static("for=203.0.113.9"));
        let client = ClientInfo::new("[2001:db8::1]:4000".parse().expect("addr"), true);
        add_forwarding_headers(&mut headers, &client, Some("api.example.com:8443"));
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.9, 2001:db8::1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "api.example.com:8443");
        assert_eq!(
            headers[&FORWARDED],
            "for=203.0.113.9, for=\"[2001:db8::1]\";proto=https;host=\"api.example.com:8443\""
        );
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id_of(&headers), "abc-123");
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        let made = request_id_of(&headers);
        assert_eq!(made.len(), 32);
        assert_ne!(made, new_request_id());
    }
}
