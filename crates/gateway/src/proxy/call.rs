//! The call to a route's upstream: admission (circuit breaker, then bulkhead), the request
//! rewritten for the upstream, a body made resendable when a retry may need it, the attempts
//! ([`super::attempt`]), and the fallback's alternate upstream.

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use hyper::body::Incoming;
use sekisho_policy::breaker::{Outcome as BreakerOutcome, Permit};
use sekisho_policy::bulkhead::Slot;
use tokio::time::Instant;

use super::attempt::Call;
use super::context::Exchange;
use super::forwarding::{content_length, upstream_request};
use crate::body::{RequestBody, ResponseBody};
use crate::edge::GatewayError;
use crate::fallback::FallbackKind;
use crate::router::CompiledRoute;
use crate::upstream::{CallOutcome, Circuit, UpstreamGroup};

/// The call to the route's upstream: admission, the request rewritten for the upstream, the
/// attempts, and the alternate upstream of the fallback. `body` is `None` for a request the
/// gateway makes itself (a background refresh).
pub(super) async fn call_upstream(
    exchange: &mut Exchange,
    route: &Arc<CompiledRoute>,
    mut parts: http::request::Parts,
    body: Option<Incoming>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let started = exchange.started;
    let upstream = &route.upstream;
    let admitted = match Admitted::enter(upstream, started).await {
        Ok(admitted) => Ok(admitted),
        Err(error) if route.fallback.is_none() => return Err(error),
        Err(error) => Err(error),
    };
    let path_and_query = upstream_request(
        route,
        &mut parts,
        &exchange.client,
        exchange.host.take(),
        &exchange.request_id,
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
    if let (Some(alternate), Some(head)) = (&fallback.upstream, spare_head) {
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
                Ok(admitted) => once.send(alternate, admitted, head, body, record).await,
                Err(error) => Err(error),
            };
            if !fallback.covers(&result) {
                return result;
            }
        }
    }
    result
}

/// What admission gave a call: the circuit's permit (recorded once when the call ends) and a
/// slot of the bulkhead (held by the response body to its end).
pub(super) struct Admitted<'a> {
    pub(super) circuit: CircuitCall<'a>,
    pub(super) slot: Option<Slot>,
}

impl<'a> Admitted<'a> {
    /// Admission by an upstream's circuit breaker, then its bulkhead: an open circuit answers
    /// at once, before any work for the upstream. A full bulkhead gives the circuit permit
    /// back: it says nothing about the upstream's health.
    async fn enter(upstream: &'a UpstreamGroup, now: Instant) -> Result<Self, GatewayError> {
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
        Ok(Self { circuit, slot })
    }
}

/// A call admitted by the upstream's circuit breaker: its outcome is recorded once, and a call
/// that never reached the upstream (no target, the client's fault) is given back on drop.
pub(super) struct CircuitCall<'a> {
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
    ///
    /// `own_delay` is the event loop's own scheduling delay (`lag.rs`): a call whose time it
    /// dominates (a quarter or more, as for the adaptive limit) was slow because the gateway was
    /// saturated, not the upstream, and is not judged slow — a saturated gateway must not open
    /// the circuits of healthy upstreams.
    pub(super) fn finish(
        &mut self,
        outcome: CallOutcome,
        started: Instant,
        at: Instant,
        own_delay: Duration,
    ) {
        if let (Some(circuit), Some(permit)) = (self.circuit, self.permit.take()) {
            let failed = match outcome {
                CallOutcome::Status(status) => circuit.failure_statuses.contains(&status),
                _ => true,
            };
            let took = at.saturating_duration_since(started);
            let own = !own_delay.is_zero() && own_delay.saturating_mul(4) >= took;
            circuit.breaker.record(
                permit,
                BreakerOutcome {
                    failed,
                    duration: if own { Duration::ZERO } else { took },
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
