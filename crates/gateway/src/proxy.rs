//! The request's path through the gateway: limits, route, target, forward, answer.
//!
//! [`handle`] never fails: whatever goes wrong becomes a [`GatewayError`], which the edge turns
//! into the contract's JSON. It records metrics and writes the access log line once the response
//! head is known.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::BodyClaim;
use crate::body::{Held, RequestBody, ResponseBody};
use crate::cache::{Fetch, Lookup};
use crate::edge::{error_response, GatewayError};
use crate::fallback::FallbackKind;
use crate::request_id::{request_id_of, X_REQUEST_ID};
use crate::retry::{FailedTry, RetryPolicy, TryFailure};
use crate::router::{CompiledRoute, RouteQuery};
use crate::runtime::Runtime;
use crate::sync::lock;
use crate::upstream::{CallOutcome, Circuit, UpstreamGroup};
use crate::GatewayState;
use sekisho_config::HashKey;
use sekisho_policy::breaker::{Outcome as BreakerOutcome, Permit};
use sekisho_policy::bulkhead::Slot;
use sekisho_policy::concurrency::{Permit as ConcurrencyPermit, Sample};
use sekisho_policy::ratelimit::Decision;

use crate::ratelimit::{self, KeySource, RateLimit};

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
    /// The peer's IP as a header value (`X-Forwarded-For` of a first hop), once per connection.
    ip_value: HeaderValue,
    /// `for=<node>;proto=<scheme>`, the start of this hop's `Forwarded` element (RFC 7239
    /// quoting), once per connection.
    forwarded_prefix: Arc<str>,
    /// The last `Host` this connection asked for and this hop's whole `Forwarded` value for it
    /// (a first hop): requests on one connection usually name one host.
    forwarded_memo: Arc<Mutex<Option<(HeaderValue, HeaderValue)>>>,
}

impl ClientInfo {
    /// Describes a client connection.
    pub fn new(remote: SocketAddr, tls: bool) -> Self {
        let ip = remote.ip();
        let forwarded_node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let ip_text = ip.to_string();
        let proto = if tls { "https" } else { "http" };
        Self {
            remote,
            tls,
            ip_value: HeaderValue::from_str(&ip_text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            ip_text: Arc::from(ip_text),
            forwarded_prefix: Arc::from(format!("for={forwarded_node};proto={proto}")),
            forwarded_memo: Arc::default(),
        }
    }
}

/// What happened, for metrics and the access log.
#[derive(Default)]
struct Outcome {
    route: Option<Arc<CompiledRoute>>,
    target: Option<Arc<str>>,
    error: Option<GatewayError>,
    /// When the upstream's answer head arrived (one clock read serves the latency estimate and
    /// the request metrics).
    answered: Option<Instant>,
    /// Tries made (0 when none reached a target).
    tries: u32,
    /// The fallback that answered: "upstream" or "static".
    fallback: Option<&'static str>,
    /// The route's adaptive concurrency place, sampled and handed to the response body once the
    /// answer is known.
    concurrency: Option<ConcurrencyPermit>,
    /// The upstream timed out (whether or not a fallback answered): a drop for the limit.
    timed_out: bool,
    /// The tighter rate-limit decision that applied, for the `RateLimit-*` fields.
    rate: Option<Decision>,
    /// What the cache did, for `Cache-Status`.
    cache_status: Option<HeaderValue>,
}

/// Serves one request.
pub(crate) async fn handle(
    shared: &GatewayState,
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
    let mut outcome = Outcome::default();
    let mut forwarded = if ambiguous_length {
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
    if let Some(permit) = outcome.concurrency.take() {
        sample_concurrency(permit, &mut forwarded, &outcome, started);
    }
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
    if let Some(decision) = &outcome.rate {
        ratelimit::add_headers(response.headers_mut(), decision);
    }
    if let Some(status) = outcome.cache_status.take() {
        response
            .headers_mut()
            .insert(&crate::cache::CACHE_STATUS, status);
    }
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

/// Tells the route's adaptive limit how the call went — an upstream answer is a latency sample,
/// a timeout a drop, anything else (a client error, a refusal by circuit or bulkhead) nothing —
/// and keeps its place taken until the response body is done.
fn sample_concurrency(
    mut permit: ConcurrencyPermit,
    forwarded: &mut Result<Response<ResponseBody>, GatewayError>,
    outcome: &Outcome,
    started: Instant,
) {
    if outcome.timed_out {
        permit.sample(
            Sample::Dropped,
            started.into_std(),
            std::time::Instant::now(),
        );
    } else if let (Ok(_), None, Some(answered)) = (&*forwarded, outcome.fallback, outcome.answered)
    {
        permit.sample(Sample::Success, started.into_std(), answered.into_std());
    }
    if let Ok(response) = forwarded {
        response.body_mut().hold_concurrency(permit);
    }
}

/// Checks one rate limit and keeps the tighter decision for the response's `RateLimit-*` fields.
async fn apply_rate_limit(
    limit: &RateLimit,
    source: &KeySource<'_>,
    outcome: &mut Outcome,
) -> Result<(), GatewayError> {
    let checked = limit.check(source).await;
    let decision = match &checked {
        Ok(decision) => *decision,
        Err(GatewayError::RateLimited { decision, .. }) => *decision,
        Err(_) => return checked.map(|_| ()),
    };
    outcome.rate = Some(ratelimit::tighter(outcome.rate, decision));
    checked.map(|_| ())
}

/// What a rate limit keys a request by; `client_ip` keeps the client's address once known.
fn key_source<'a>(
    runtime: &Runtime,
    client: &ClientInfo,
    headers: &'a HeaderMap,
    route: Option<&'a str>,
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
        at: started.into_std(),
    }
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
    // The client's address behind trusted proxies, worked out once for both limits.
    let mut client_ip = None;
    if let Some(limit) = &runtime.rate_limit {
        let source = key_source(
            runtime,
            client,
            &parts.headers,
            None,
            started,
            &mut client_ip,
        );
        apply_rate_limit(limit, &source, outcome).await?;
    }
    let original_host = host_of(&parts.headers, &parts.uri);
    let route = {
        let host_without_port = original_host.as_ref().map(|h| strip_port(host_text(h)));
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
    if let Some(limit) = &route.rate_limit {
        let source = key_source(
            runtime,
            client,
            &parts.headers,
            Some(&route.name),
            started,
            &mut client_ip,
        );
        apply_rate_limit(limit, &source, outcome).await?;
    }
    let deadline = started + route.timeout;
    let mut fetch = None;
    if let Some(cache) = &route.cache {
        match cache.lookup(&mut parts, deadline).await {
            Lookup::Pass(status) => outcome.cache_status = Some(status),
            Lookup::Hit(response, status) => {
                outcome.cache_status = Some(status);
                return Ok(response);
            }
            Lookup::HitRefresh(response, status, refresh) => {
                outcome.cache_status = Some(status);
                spawn_refresh(&route, client, &parts, original_host, request_id, refresh);
                return Ok(response);
            }
            Lookup::Fetch(miss) => fetch = Some(miss),
        }
    }
    if let Some(limit) = &route.concurrency {
        match limit.try_acquire() {
            Ok(permit) => outcome.concurrency = Some(permit),
            Err(shed) => {
                return Err(GatewayError::Overloaded {
                    route: Arc::clone(&route.name),
                    limit: shed.limit,
                })
            }
        }
    }
    let result = call_upstream(
        &route,
        client,
        parts,
        Some(body),
        original_host,
        request_id,
        started,
        outcome,
    )
    .await;
    let result = match fetch {
        Some(fetch) => {
            let (result, status) = fetch.finish(result).await;
            outcome.cache_status = Some(status);
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
            outcome.fallback = Some("static");
            Ok(answer.response())
        }
        None => result,
    }
}

/// Refreshes a cached entry in the background (stale-while-revalidate, early refresh): the same
/// GET, without a body, under a deadline of its own.
fn spawn_refresh(
    route: &Arc<CompiledRoute>,
    client: &ClientInfo,
    parts: &http::request::Parts,
    original_host: Option<HeaderValue>,
    request_id: &HeaderValue,
    refresh: Box<Fetch>,
) {
    let route = Arc::clone(route);
    let client = client.clone();
    let mut head = http::Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.version_mut() = parts.version;
    *head.headers_mut() = parts.headers.clone();
    let (head, ()) = head.into_parts();
    let request_id = request_id.clone();
    tokio::spawn(async move {
        let mut outcome = Outcome::default();
        let result = call_upstream(
            &route,
            &client,
            head,
            None,
            original_host,
            &request_id,
            Instant::now(),
            &mut outcome,
        )
        .await;
        let _ = refresh.finish(result).await;
    });
}

/// The call to the route's upstream: admission (circuit, bulkhead), the request rewritten for
/// the target, the tries, and the alternate upstream of the fallback. `body` is `None` for a
/// request the gateway makes itself (a background refresh).
#[allow(clippy::too_many_arguments)]
async fn call_upstream(
    route: &Arc<CompiledRoute>,
    client: &ClientInfo,
    mut parts: http::request::Parts,
    body: Option<Incoming>,
    original_host: Option<HeaderValue>,
    request_id: &HeaderValue,
    started: Instant,
    outcome: &mut Outcome,
) -> Result<Response<ResponseBody>, GatewayError> {
    let upstream = &route.upstream;
    let admitted = match admit(upstream, started).await {
        Ok(admitted) => Ok(admitted),
        Err(error) if route.fallback.is_none() => return Err(error),
        Err(error) => Err(error),
    };

    // The request as the upstream sees it, but for the target's authority.
    let path = route.upstream_path(parts.uri.path());
    let path_and_query = match parts.uri.path_and_query() {
        // Unchanged (no prefix stripped): the request's own, shared, not parsed again.
        Some(original) if path.len() == parts.uri.path().len() => original.clone(),
        _ => {
            let rewritten = match parts.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.to_owned(),
            };
            http::uri::PathAndQuery::try_from(rewritten)
                .map_err(|e| GatewayError::BadRequest(format!("invalid request target: {e}")))?
        }
    };
    let headers = &mut parts.headers;
    remove_hop_by_hop(headers);
    add_forwarding_headers(headers, client, original_host.as_ref());
    if !headers.contains_key(header::HOST) {
        if let Some(host) = original_host {
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

    let deadline = started + route.timeout;
    let retry = route.retry.as_ref();
    let method_resendable = retry.is_some_and(|policy| policy.allows_method(&parts.method));
    // A body that a retry may have to send again is read whole first, when it is small enough;
    // any other body streams, and is resent only if a failed connect left it unread.
    let (body, claim) = match body {
        None => RequestBody::none(route.max_body_bytes),
        Some(body) => match retry {
            Some(policy)
                if admitted.is_ok()
                    && method_resendable
                    && !http_body::Body::is_end_stream(&body)
                    && content_length(&parts.headers)
                        .is_some_and(|length| length <= policy.max_buffered_body) =>
            {
                match tokio::time::timeout_at(
                    deadline,
                    RequestBody::buffer(body, route.max_body_bytes),
                )
                .await
                {
                    Ok(Ok(buffered)) => buffered,
                    Ok(Err(error)) => return Err(GatewayError::from_client_body(&error)),
                    Err(_) => {
                        return Err(GatewayError::RequestTimeout {
                            timeout: route.timeout,
                        })
                    }
                }
            }
            _ => RequestBody::new(body, route.max_body_bytes),
        },
    };
    if let Some(policy) = retry {
        policy.deposit(started);
    }
    let call = Call {
        route,
        client,
        claim: &claim,
        path_and_query: &path_and_query,
        started,
        deadline,
    };
    let fallback = route.fallback.as_ref();
    // An alternate upstream needs the head again.
    let spare_head = fallback
        .filter(|fallback| fallback.upstream.is_some())
        .map(|_| parts.clone());
    let result = match admitted {
        Ok((circuit, slot)) => {
            let resendable = method_resendable && claim.replayable();
            call.send(
                upstream, circuit, slot, retry, resendable, parts, body, outcome,
            )
            .await
        }
        Err(error) => Err(error),
    };
    outcome.timed_out = matches!(result, Err(GatewayError::UpstreamTimeout { .. }));
    let Some(fallback) = fallback else {
        return result;
    };
    if !fallback.covers(&result) {
        return result;
    }
    let mut result = result;
    if let (Some(alternate), Some(head)) = (&fallback.upstream, spare_head) {
        // The alternate gets the request only if its body can be sent (again).
        if let Some(body) = claim.reclaim() {
            fallback.count(FallbackKind::Upstream);
            outcome.fallback = Some("upstream");
            result = match admit(alternate, Instant::now()).await {
                Ok((circuit, slot)) => {
                    call.send(alternate, circuit, slot, None, false, head, body, outcome)
                        .await
                }
                Err(error) => Err(error),
            };
            if !fallback.covers(&result) {
                return result;
            }
        }
    }
    result
}

/// Admission by an upstream's circuit breaker, then its bulkhead: an open circuit answers at
/// once, before any work for the upstream; a slot is held until the response body is done. A
/// full bulkhead gives the circuit permit back: it says nothing about the upstream's health.
async fn admit(
    upstream: &UpstreamGroup,
    now: Instant,
) -> Result<(CircuitCall<'_>, Option<Slot>), GatewayError> {
    let circuit = CircuitCall::enter(upstream, now)?;
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
    Ok((circuit, slot))
}

/// What every try of one request shares, whichever upstream it goes to.
struct Call<'a> {
    route: &'a CompiledRoute,
    client: &'a ClientInfo,
    claim: &'a BodyClaim,
    path_and_query: &'a http::uri::PathAndQuery,
    started: Instant,
    deadline: Instant,
}

impl Call<'_> {
    /// Sends the request to `upstream`, trying again as `retry` allows (without a policy, a
    /// failed connect moves on to another target), and answers the upstream's response or the
    /// last failure.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        upstream: &UpstreamGroup,
        mut circuit: CircuitCall<'_>,
        slot: Option<Slot>,
        retry: Option<&RetryPolicy>,
        resendable: bool,
        mut parts: http::request::Parts,
        mut body: RequestBody,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let Self {
            route,
            client,
            claim,
            path_and_query,
            started,
            deadline,
        } = *self;
        parts.version = match upstream.protocol {
            sekisho_config::UpstreamProtocol::Http1 => Version::HTTP_11,
            sekisho_config::UpstreamProtocol::H2c => Version::HTTP_2,
        };
        let key = upstream
            .hash_key
            .as_ref()
            .and_then(|key| request_key(key, client, &parts.headers, &parts.uri));
        // Without `[routes.retry]`, only a failed connect is tried again, on another target.
        let max_tries = retry.map_or(MAX_CONNECT_TRIES, |policy| policy.attempts);

        // One deadline covers every try, the backoffs, the response head and the streamed body.
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        // Targets that failed this request: the next try goes elsewhere when it can.
        let mut failed_targets: Vec<usize> = Vec::new();
        let mut next_target: Option<usize> = None;
        let mut previous_delay = Duration::ZERO;
        let mut tries: u32 = 0;
        let mut now = started;
        loop {
            let target_index = match next_target.take() {
                Some(index) => index,
                None => match upstream.pick(key, now, &[]) {
                    Ok(index) => index,
                    Err(_) => {
                        return Err(GatewayError::NoHealthyUpstream {
                            upstream: upstream.name.clone(),
                        })
                    }
                },
            };
            tries += 1;
            outcome.tries = tries;
            let target = &upstream.targets[target_index];
            outcome.target = Some(Arc::clone(&target.address));
            // A head that may be needed again is copied; the last try takes it (an empty head is
            // left behind, which costs no allocation).
            let may_retry = tries < max_tries && (retry.is_some() || upstream.targets.len() > 1);
            let mut head = if may_retry {
                parts.clone()
            } else {
                std::mem::replace(&mut parts, Request::new(()).into_parts().0)
            };
            // Origin-form: the connection is the target's (h2c adds scheme and authority).
            head.uri = Uri::from(path_and_query.clone());
            let in_flight = upstream.begin(target_index);
            let call = target.conn.send(Request::from_parts(head, body), now);
            let per_try = retry
                .and_then(|policy| policy.per_try_timeout)
                .map(|timeout| (timeout, now + timeout))
                .filter(|(_, at)| *at < deadline);
            let try_deadline = async {
                match per_try {
                    Some((_, at)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                biased;
                result = call => Ok(result),
                () = sleep.as_mut() => Err(None),
                () = try_deadline => Err(per_try.map(|(timeout, _)| timeout)),
            };
            let finished = Instant::now();
            let latency = finished.saturating_duration_since(now);
            // How this try failed, and what the client gets if it is not tried again.
            let (failure, answer): (TryFailure, Answer) = match result {
                Err(expired) => {
                    upstream.record(target_index, CallOutcome::Timeout, latency, finished);
                    let error = GatewayError::UpstreamTimeout {
                        upstream: upstream.name.clone(),
                        timeout: expired.unwrap_or(route.timeout),
                    };
                    if expired.is_none() {
                        // The route's own deadline: nothing is left for another try.
                        circuit.finish(CallOutcome::Timeout, started, finished);
                        return Err(error);
                    }
                    (TryFailure::Timeout, Answer::Error(error))
                }
                Ok(Ok((upstream_response, lease))) => {
                    let status = upstream_response.status().as_u16();
                    let answer = CallOutcome::Status(status);
                    upstream.record(target_index, answer, latency, finished);
                    let retry_wanted = retry.is_some_and(|policy| policy.retries_status(status));
                    if !retry_wanted || tries >= max_tries {
                        outcome.answered = Some(finished);
                        circuit.finish(answer, started, finished);
                        return Ok(downstream_response(
                            route,
                            upstream_response,
                            deadline,
                            (in_flight, lease),
                            slot,
                        ));
                    }
                    (
                        TryFailure::Status(status),
                        Answer::Upstream(upstream_response, (in_flight, lease)),
                    )
                }
                Ok(Err(error)) => {
                    let error = GatewayError::from_upstream_call(&upstream.name, error);
                    let (call_outcome, failure) = match &error {
                        GatewayError::UpstreamConnect { .. } => {
                            upstream.connect_errors.inc();
                            (CallOutcome::ConnectError, TryFailure::ConnectError)
                        }
                        GatewayError::UpstreamFailed { .. } => {
                            (CallOutcome::Broken, TryFailure::Status(502))
                        }
                        // The client's body was at fault, not the target: the circuit does not
                        // judge it (the permit is given back).
                        _ => return Err(error),
                    };
                    upstream.record(target_index, call_outcome, latency, finished);
                    (failure, Answer::Error(error))
                }
            };

            // Another try? Only with the body in hand again, a target, and the policy's consent.
            // Looked at, not taken: a body not sent again stays for a fallback.
            let body_available = tries < max_tries && claim.available();
            if !failed_targets.contains(&target_index) {
                failed_targets.push(target_index);
            }
            let other = upstream.pick(key, finished, &failed_targets).ok();
            let decision = match (body_available, retry) {
                (false, _) => Err(()),
                (true, Some(policy)) => policy
                    .decide(&FailedTry {
                        failure,
                        tries,
                        resendable,
                        other_target: other.is_some(),
                        previous_delay,
                        now: finished,
                        deadline,
                    })
                    .map_err(|_| ()),
                // Without a policy a failed connect moves on to another target, nothing else.
                (true, None) if failure == TryFailure::ConnectError && other.is_some() => {
                    Ok(Duration::ZERO)
                }
                (true, None) => Err(()),
            };
            let (Ok(delay), Some(again)) = (decision, decision.ok().and_then(|_| claim.reclaim()))
            else {
                return match answer {
                    Answer::Upstream(response, held) => {
                        outcome.answered = Some(finished);
                        if let TryFailure::Status(status) = failure {
                            circuit.finish(CallOutcome::Status(status), started, finished);
                        }
                        Ok(downstream_response(route, response, deadline, held, slot))
                    }
                    Answer::Error(error) => {
                        let call_outcome = match failure {
                            TryFailure::ConnectError => CallOutcome::ConnectError,
                            TryFailure::Timeout => CallOutcome::Timeout,
                            TryFailure::Status(_) => CallOutcome::Broken,
                        };
                        circuit.finish(call_outcome, started, finished);
                        Err(error)
                    }
                };
            };
            tracing::debug!(
                upstream = %upstream.name,
                target = %target.address,
                failure = failure.label(),
                tries,
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            // A status answer is given up (its body is not read), and with it its in-flight count.
            drop(answer);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            previous_delay = delay;
            body = again;
            now = Instant::now();
            // The target that failed is avoided when another is eligible; otherwise the retry goes
            // wherever the balancer says (a single-target upstream retries its one target).
            next_target = if failure == TryFailure::ConnectError || delay.is_zero() {
                other
            } else {
                upstream.pick(key, now, &failed_targets).ok()
            };
            if next_target.is_none() && retry.is_none() {
                return Err(GatewayError::NoHealthyUpstream {
                    upstream: upstream.name.clone(),
                });
            }
        }
    }
}

/// What an upstream answer holds until its body is done: its target's in-flight count and the
/// connection it came on.
type AnswerHolds = (Option<Held>, Option<crate::pool::Lease>);

/// What a failed try leaves for the client if it is not tried again.
enum Answer {
    /// The target's answer (a status named in `retry_on`), with its in-flight count and its
    /// connection.
    Upstream(Response<Incoming>, AnswerHolds),
    /// The gateway's error.
    Error(GatewayError),
}

/// The upstream's answer on its way down: hop-by-hop headers out, the route's header rules
/// applied, its body bounded by the route's deadline and holding its target's in-flight count
/// and the bulkhead slot until it is done.
fn downstream_response(
    route: &CompiledRoute,
    response: Response<Incoming>,
    deadline: Instant,
    (in_flight, lease): AnswerHolds,
    slot: Option<Slot>,
) -> Response<ResponseBody> {
    let (mut parts, response_body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    for name in &route.headers.response_remove {
        parts.headers.remove(name);
    }
    for (name, value) in &route.headers.response_set {
        parts.headers.insert(name, value.clone());
    }
    let mut body = ResponseBody::upstream(response_body, Some(deadline));
    if let Some(in_flight) = in_flight {
        body.hold(in_flight);
    }
    if let Some(lease) = lease {
        body.keep(lease);
    }
    body.hold_slot(slot);
    Response::from_parts(parts, body)
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

/// Tries of one request when connects fail and the route has no `[routes.retry]`: the first
/// target and up to two others.
const MAX_CONNECT_TRIES: u32 = 3;

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

/// The host the client asked for: its `Host` field (shared, not copied) or the request
/// target's authority; only one that is text.
fn host_of(headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    if let Some(host) = headers.get(header::HOST).filter(|h| h.to_str().is_ok()) {
        return Some(host.clone());
    }
    HeaderValue::from_str(uri.authority()?.as_str()).ok()
}

/// `host` as text (a [`host_of`] value always is).
fn host_text(host: &HeaderValue) -> &str {
    host.to_str().unwrap_or_default()
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

fn add_forwarding_headers(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    host_value: Option<&HeaderValue>,
) {
    let host = host_value.map(host_text);
    // Per request only what changes: the values of this connection were made once, and no
    // `format!` runs on the common path (a first hop: no earlier X-Forwarded-For/Forwarded).
    let proto = if client.tls { "https" } else { "http" };
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => {
            let mut joined = String::with_capacity(existing.len() + client.ip_text.len() + 16);
            for prior in headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
            {
                joined.push_str(prior);
                joined.push_str(", ");
            }
            joined.push_str(&client.ip_text);
            HeaderValue::try_from(joined).ok()
        }
        _ => Some(client.ip_value.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host_value {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
    let existing = headers
        .get(&FORWARDED)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    // A first hop asking for the same host as the connection's previous request: the same value.
    let memo = existing.is_none().then(|| lock(&client.forwarded_memo));
    if let Some(Some((memo_host, value))) = memo.as_deref() {
        if Some(memo_host) == host_value {
            headers.insert(&FORWARDED, value.clone());
            return;
        }
    }
    let mut combined = String::with_capacity(
        existing.map_or(0, |e| e.len() + 2)
            + client.forwarded_prefix.len()
            + host.map_or(0, |h| h.len() + 8),
    );
    if let Some(existing) = existing {
        combined.push_str(existing);
        combined.push_str(", ");
    }
    combined.push_str(&client.forwarded_prefix);
    // RFC 7239: a host (with its port) goes in quotes; one that cannot be quoted is left out.
    if let Some(host) = host {
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            combined.push_str(";host=\"");
            combined.push_str(host);
            combined.push('"');
        }
    }
    if let Ok(value) = HeaderValue::try_from(combined) {
        if let (Some(mut memo), Some(host)) = (memo, host_value) {
            *memo = Some((host.clone(), value.clone()));
        }
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
            tries = outcome.tries,
            fallback = outcome.fallback.unwrap_or(""),
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
        add_forwarding_headers(
            &mut headers,
            &client,
            Some(&HeaderValue::from_static("api.example.com:8443")),
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.9, 2001:db8::1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "api.example.com:8443");
        assert_eq!(
            headers[&FORWARDED],
            "for=203.0.113.9, for=\"[2001:db8::1]\";proto=https;host=\"api.example.com:8443\""
        );
    }
}
