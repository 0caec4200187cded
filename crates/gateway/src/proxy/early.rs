//! Refusals decided on the head as it was read, before a request is built (issue 14: a
//! rejection must cost a small fraction of a proxied request).
//!
//! Two refusals come in floods when something is overloaded: the gateway's own (`[server.overload]`,
//! its event loop behind) and a route's adaptive concurrency limit shedding. For a request
//! the owned HTTP/1.1 path read, both can be decided from the request line, the `Host` field and
//! `X-Request-Id` alone, and answered without an `http::Request`, the steps' futures, a
//! `Response` or its map: the same answer [`super::handle`] gives, recorded the same way.
//!
//! Only where nothing that runs before the refusal in [`super::steps::run`] could answer
//! otherwise: no access log (the line needs the request's context), no server-wide rate
//! limit, a head within `max_header_bytes` and a body within the route's limit, not an auth
//! endpoint, a route found without looking at headers, and none of the steps between the
//! route and its limit (`auth`, its rate limit, its cache). Everything else goes the usual way,
//! where the same limit still sheds it.

use std::sync::atomic::Ordering;

use http::{HeaderValue, Method};

use super::auth::Endpoint;
use super::forwarding::strip_port;
use crate::edge::{GatewayError, Refusal};
use crate::request_id::{self, new_request_id, X_REQUEST_ID};
use crate::state::GatewayState;

/// What the refusal looks at: a head as the owned path read it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The target's path (no query).
    pub path: &'a str,
    /// The `Host` field's value.
    pub host: &'a [u8],
    /// The head's fields (names, and their values' places in `bytes`).
    pub fields: &'a sekisho_h1::Fields,
    /// The bytes the head was read from.
    pub bytes: &'a [u8],
    /// Bytes of the head.
    pub head_len: usize,
    /// The body's length (`Content-Length`, 0 without one).
    pub body_length: u64,
}

/// A request refused before it was built: the answer, and the id it carries.
#[derive(Debug)]
pub(crate) struct EarlyRefusal {
    /// Status, `Retry-After` and body, as the edge makes them for the error.
    pub refusal: Refusal,
    /// The request's id (`X-Request-Id`).
    pub request_id: HeaderValue,
    /// The connection ends after the answer (the gateway itself is overloaded: the client's
    /// next try waits in the listen backlog, as [`super::handle`] does it).
    pub close: bool,
}

/// The refusal the head `view` makes gets now, if it can be decided before the request is
/// built; it is counted and recorded in the metrics as [`super::handle`] records one. `view`
/// is called only when a refusal is possible at all — the gateway overloaded, or a route's
/// limit shed lately (`GatewayState::shedding`) —: on most requests this is two relaxed loads.
pub(crate) fn refuse<'a>(
    shared: &GatewayState,
    view: impl FnOnce() -> HeadView<'a>,
) -> Option<EarlyRefusal> {
    let overloaded = shared.lag.overloaded();
    let limit_shedding =
        shared.shedding.load(Ordering::Relaxed) && shared.sheds_from_head.load(Ordering::Relaxed);
    if !overloaded && !limit_shedding {
        return None;
    }
    let runtime = shared.runtime.load();
    if runtime.listener.access_log {
        return None;
    }
    let head = view();
    let (error, route) = if overloaded {
        shared.metrics.overload_refused.inc();
        let delay = shared.lag.current();
        (GatewayError::GatewayOverloaded { delay }, None)
    } else {
        if !runtime.sheds_from_head() || head.head_len as u64 > runtime.listener.max_header_bytes {
            return None;
        }
        if let Some(auth) = &shared.auth {
            if Endpoint::of(&auth.config().path_prefix, head.path).is_some() {
                return None;
            }
        }
        // As `host_of` reads it: text only when `HeaderValue::to_str` would give it.
        let host = (runtime.router.matches_hosts()
            && head
                .host
                .iter()
                .all(|&b| b == b'\t' || (32..127).contains(&b)))
        .then(|| std::str::from_utf8(head.host).ok())
        .flatten()
        .map(strip_port);
        let route = runtime
            .router
            .find_by_line(host, head.path, head.method)??;
        if !route.sheds_first() || head.body_length > route.max_body_bytes {
            return None;
        }
        let Err(shed) = route.concurrency.as_ref()?.shed_if_full() else {
            // Room again: the requests that follow go their usual way until the next shed.
            shared.shedding.store(false, Ordering::Relaxed);
            return None;
        };
        let error = GatewayError::Overloaded {
            route: std::sync::Arc::clone(&route.name),
            limit: shed.limit,
        };
        (error, Some(route))
    };
    // Only a refusal reads the clock.
    let started = crate::clock::now();
    let request_id = match sekisho_h1::field(head.bytes, head.fields, &X_REQUEST_ID) {
        Some(id) if request_id::is_sane(id) => {
            HeaderValue::from_bytes(id).unwrap_or_else(|_| new_request_id())
        }
        _ => new_request_id(),
    };
    shared.metrics.refused_from_head.inc();
    let refusal = Refusal::of(&error, request_id.as_bytes());
    let status = refusal.status.as_u16();
    let seconds = started.elapsed().as_secs_f64();
    match route {
        Some(route) => route.metrics.record(status, seconds),
        None => shared.unrouted_metrics.record(status, seconds),
    }
    Some(EarlyRefusal {
        refusal,
        request_id,
        close: matches!(error, GatewayError::GatewayOverloaded { .. }),
    })
}
