//! The call to a route's upstream: admission (`admission.rs`), the request rewritten for the
//! upstream, a body made resendable when a retry may need it, the attempts
//! ([`super::attempt`]), and the fallback's alternate upstream.

use std::sync::Arc;

use http::Response;
use tokio::time::Instant;

use super::admission::Admitted;
use super::attempt::Call;
use super::context::Exchange;
use super::forwarding::{content_length, forwarding_as_lines, upstream_request};
use crate::body::{ClientBody, RequestBody, ResponseBody};
use crate::edge::GatewayError;
use crate::fallback::FallbackKind;
use crate::router::CompiledRoute;

/// The call to the route's upstream: admission, the request rewritten for the upstream, the
/// attempts, and the alternate upstream of the fallback. `body` is `None` for a request the
/// gateway makes itself (a background refresh).
pub(super) async fn call_upstream(
    exchange: &mut Exchange,
    route: &Arc<CompiledRoute>,
    parts: &mut http::request::Parts,
    body: Option<ClientBody>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let started = exchange.started;
    let upstream = &route.upstream;
    let admitted = match Admitted::enter(upstream, started).await {
        Ok(admitted) => Ok(admitted),
        Err(error) if route.fallback.is_none() => return Err(error),
        Err(error) => Err(error),
    };
    // The gateway's own client side writes the forwarding fields as head lines: for an
    // HTTP/1.1 upstream and a body held whole (none, or read whole already).
    let as_lines = upstream.protocol == sekisho_config::UpstreamProtocol::Http1
        && body
            .as_ref()
            .is_none_or(|body| http_body::Body::is_end_stream(body) || body.whole_len().is_some())
        && forwarding_as_lines(route, &parts.headers);
    let (path_and_query, forwarding_lines) = upstream_request(
        route,
        parts,
        &exchange.client,
        exchange.host.take(),
        &exchange.request_id,
        as_lines,
    )?;

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
        client: &exchange.client,
        claim: &claim,
        path_and_query: &path_and_query,
        started,
        deadline,
        retry,
        resendable: method_resendable && claim.replayable(),
        own_delay: exchange.own_delay,
        lag: &exchange.lag,
        interim: exchange.client.interim.as_ref(),
        identity: exchange.identity.as_deref(),
        forwarding_lines: forwarding_lines.as_deref(),
        request_id: &exchange.request_id,
        raw_answer: exchange.raw_answer && !route.reads_answer_fields(),
    };
    let record = &mut exchange.record;
    let fallback = route.fallback.as_ref();
    // An alternate upstream needs the head again.
    let spare_head = fallback
        .filter(|fallback| fallback.upstream.is_some())
        .map(|_| parts.clone());
    let result = match admitted {
        Ok(admitted) => call.send(upstream, admitted, parts, body, record).await,
        Err(error) => Err(error),
    };
    record.timed_out = matches!(result, Err(GatewayError::UpstreamTimeout { .. }));
    let Some(fallback) = fallback else {
        return result;
    };
    if !fallback.covers(&result) {
        return result;
    }
    let mut result = result;
    if let (Some(alternate), Some(mut head)) = (&fallback.upstream, spare_head) {
        // The alternate gets the request only if its body can be sent (again); it is tried once.
        if let Some(body) = claim.reclaim() {
            fallback.count(FallbackKind::Upstream);
            record.fallback = Some("upstream");
            let once = Call {
                retry: None,
                resendable: false,
                ..call
            };
            result = match Admitted::enter(alternate, Instant::now()).await {
                Ok(admitted) => {
                    once.send(alternate, admitted, &mut head, body, record)
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
