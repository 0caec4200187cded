//! The request's path through the gateway, one file per step:
//!
//! - [`handle`] (here): the request's context made, the steps run, the answer finished (request
//!   id, `RateLimit-*`, `Cache-Status`), metrics recorded and the access line written;
//! - `early`: the refusals decided on the head as the owned HTTP/1.1 path read it, before a
//!   request is built (the gateway overloaded, a route's adaptive limit full);
//! - `steps`: head checks, the server's rate limit, the auth endpoints, the route, its body
//!   limit, `auth` requirement and rate limit, the cache, adaptive concurrency, then the call
//!   and the static fallback;
//! - `auth`: the endpoints under `[auth] path_prefix` and a route's `auth` requirement (with
//!   `sekisho-auth`), the identity headers;
//! - `call`: the request rewritten for the upstream, the body made resendable when a retry may
//!   need it, the attempts, the alternate upstream of the fallback;
//! - `admission`: the circuit breaker's permit and the bulkhead's slot;
//! - `attempt`: the attempts at targets (pick, send, deadline and per-attempt timeout, the
//!   outcome recorded for the target and the circuit, the retry decision);
//! - `forwarding`: the request and answer heads as the other side sees them;
//! - `context`: the client connection and the request's context and record;
//! - `access_log`: the access line.
//!
//! [`handle`] never fails: whatever goes wrong becomes a [`GatewayError`], which the edge turns
//! into the contract's JSON.

mod access_log;
mod admission;
mod attempt;
mod auth;
mod call;
mod context;
mod early;
mod forwarding;
mod steps;

use http::Response;

use crate::body::{ClientBody, ResponseBody};
use crate::edge::{error_response, GatewayError};
use crate::ratelimit;
use crate::request_id::{new_request_id, request_id_of, X_REQUEST_ID};
use crate::state::GatewayState;

use access_log::AccessInfo;
pub(crate) use context::ClientInfo;
use context::Exchange;
pub(crate) use early::{refuse as refuse_early, EarlyRefusal, HeadView};

/// What the connection already knows of a request's head, so the steps need not find it out
/// again.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HeadNotes {
    /// hyper read a head with both `Content-Length` and `Transfer-Encoding` (`ConnIo` saw
    /// them): refused.
    pub ambiguous_length: bool,
    /// The owned HTTP/1.1 path read the head, this many bytes of it: its length fields are
    /// one unambiguous length at most (or hyper would have read it), so the steps' head check
    /// is only its size.
    pub owned_len: Option<usize>,
    /// The head has no `X-Request-Id`: an id is made without looking for the client's.
    pub without_request_id: bool,
    /// The owned path read the head: the body's declared length (0: none declared, or chunked).
    pub body_length: Option<u64>,
}

/// Serves one request.
pub(crate) async fn handle(
    shared: &GatewayState,
    client: std::sync::Arc<ClientInfo>,
    parts: &mut http::request::Parts,
    body: ClientBody,
    notes: HeadNotes,
) -> Response<ResponseBody> {
    let started = crate::clock::now();
    let runtime = shared.runtime.load_full();
    let request_id = if notes.without_request_id {
        new_request_id()
    } else {
        request_id_of(&parts.headers)
    };
    let mut exchange = Exchange::new(client, request_id, started, &shared.lag);
    // Only the owned HTTP/1.1 path writes an answer's fields through (`h1/write.rs`).
    exchange.raw_answer = notes.owned_len.is_some();
    let access = runtime.listener.access_log.then(|| AccessInfo {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        version: parts.version,
    });
    let overloaded = shared.lag.overloaded();
    let version = parts.version;
    let mut answered = if overloaded {
        shared.metrics.overload_refused.inc();
        // The gateway itself is the bottleneck: refuse before routing or reading the body,
        // and end the connection so the client's next try waits in the listen backlog (which
        // the accept loop leaves alone meanwhile) instead of spinning on a refusal.
        Err(GatewayError::GatewayOverloaded {
            delay: shared.lag.current(),
        })
    } else if notes.ambiguous_length {
        Err(GatewayError::BadRequest(
            "both Transfer-Encoding and Content-Length are set".to_owned(),
        ))
    } else {
        let checked = notes
            .owned_len
            .is_some_and(|len| len as u64 <= runtime.listener.max_header_bytes);
        steps::run(
            &runtime,
            shared.auth.as_deref(),
            &mut exchange,
            parts,
            body,
            checked,
            notes.body_length,
        )
        .await
    };
    if let Err(GatewayError::Overloaded { .. }) = &answered {
        // The next ones may be refused from their heads (`early`).
        shared
            .shedding
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(permit) = exchange.record.concurrency.take() {
        steps::sample_concurrency(permit, &mut answered, &exchange);
    }
    let mut response = match answered {
        Ok(response) => response,
        Err(error) => {
            let response = error_response(&error, &exchange.request_id);
            exchange.record.error = Some(error);
            response
        }
    };
    if overloaded && version < http::Version::HTTP_2 {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    let status = response.status().as_u16();
    let record = &mut exchange.record;
    // With the upstream's fields as read, the id goes with them (no map, whose insert hashes
    // the name); otherwise in the map.
    match response.body_mut().raw_mut() {
        Some(raw) => raw.set_own(X_REQUEST_ID.clone(), exchange.request_id.clone()),
        None => {
            response
                .headers_mut()
                .insert(&X_REQUEST_ID, exchange.request_id.clone());
        }
    }
    if let Some(decision) = &record.rate {
        ratelimit::add_headers(response.headers_mut(), decision);
    }
    if let Some(status) = record.cache_status.take() {
        response
            .headers_mut()
            .insert(&crate::cache::CACHE_STATUS, status);
    }
    let elapsed = match record.answered {
        Some(answered) => answered.saturating_duration_since(started),
        None => started.elapsed(),
    };
    match &record.route {
        Some(route) => route.metrics.record(status, elapsed.as_secs_f64()),
        None => shared
            .unrouted_metrics
            .record(status, elapsed.as_secs_f64()),
    }
    if let Some((operation, took)) = record.auth {
        let error_type = record.error.as_ref().map_or("none", |error| error.code());
        let auth_status = match (operation, &record.error) {
            ("validate", None) => 200,
            _ => status,
        };
        shared.metrics.record_auth(
            operation,
            auth_status,
            error_type,
            took.map(|took| took.as_secs_f64()),
        );
    }
    if let Some(access) = access {
        access.log(&exchange, status, elapsed);
    }
    response
}

#[cfg(test)]
pub(crate) mod tests {
    use std::future::Future;
    use std::sync::Arc;

    use crate::body::ClientBody;
    use http::Request;

    use super::*;
    use crate::router::CompiledRoute;

    /// The size of the future `make` returns, without making one (the connection's tests
    /// use it too).
    pub(crate) fn future_size<Args, Fut: Future>(_make: impl FnOnce(Args) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// The size of the call's future ([`call::call_upstream`]).
    fn call_size() -> usize {
        future_size(
            |(exchange, route, parts, body): (
                &'static mut Exchange,
                &'static Arc<CompiledRoute>,
                &'static mut http::request::Parts,
                Option<ClientBody>,
            )| call::call_upstream(exchange, route, parts, body),
        )
    }

    /// The call's future (the attempts, the target's connection) is boxed where `steps::run`
    /// awaits it, so the futures above it, made and moved on every request, stay smaller than
    /// it: were the box dropped, each would hold the call whole and be copied with it
    /// (issue 20; release build: `handle` 2,640 bytes, the call 4,856, 7,056 before).
    #[test]
    fn the_request_futures_do_not_hold_the_call() {
        let handle = future_size(
            |(shared, client, parts, body, notes): (
                &'static GatewayState,
                Arc<ClientInfo>,
                &'static mut http::request::Parts,
                ClientBody,
                HeadNotes,
            )| super::handle(shared, client, parts, body, notes),
        );
        let steps = future_size(
            |(runtime, auth, exchange, parts, body, checked, length): (
                &'static crate::runtime::Runtime,
                Option<&'static sekisho_auth::Auth>,
                &'static mut Exchange,
                &'static mut http::request::Parts,
                ClientBody,
                bool,
                Option<u64>,
            )| steps::run(runtime, auth, exchange, parts, body, checked, length),
        );
        let call = call_size();
        assert!(handle < call, "handle {handle} bytes, the call {call}");
        assert!(steps < call, "steps {steps} bytes, the call {call}");
    }

    /// An attempt through hyper's client (a streamed body: rare) holds that client's future in
    /// a box of its own: unboxed, it is over twice the size of the owned client side's, and the
    /// call's future — boxed and copied on every request — held it whole (debug build: the
    /// call 5,848 bytes with it, 4,464 without; hyper's future 2,224, the owned one's 840).
    #[test]
    fn the_call_does_not_hold_hypers_client_future() {
        use crate::body::RequestBody;
        use crate::interim::InterimSink;
        use crate::pool::OwnedHead;
        use crate::upstream::TargetConn;
        use tokio::time::Instant;
        let owned = future_size(
            |(conn, head, body, now, interim): (
                &'static TargetConn,
                OwnedHead<'static>,
                &'static mut RequestBody,
                Instant,
                Option<&'static InterimSink>,
            )| conn.send_whole(head, body, now, interim),
        );
        let hyper = future_size(
            |(conn, request, now, interim): (
                &'static TargetConn,
                Request<RequestBody>,
                Instant,
                Option<&'static InterimSink>,
            )| conn.send(request, now, interim),
        );
        let call = call_size();
        assert!(
            call < 2 * hyper + owned,
            "the call {call} bytes, hyper's client {hyper}, the owned side {owned}"
        );
    }
}
