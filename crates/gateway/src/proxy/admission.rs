//! Admission to an upstream: a permit of its circuit breaker ([`CircuitCall`], recorded once
//! when the call ends) and a slot of its bulkhead, before any work is done for the upstream.

use std::time::Duration;

use sekisho_policy::breaker::{Outcome as BreakerOutcome, Permit};
use sekisho_policy::bulkhead::Slot;
use tokio::time::Instant;

use crate::edge::GatewayError;
use crate::upstream::{CallOutcome, Circuit, UpstreamGroup};

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
    pub(super) async fn enter(
        upstream: &'a UpstreamGroup,
        now: Instant,
    ) -> Result<Self, GatewayError> {
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

/// Trips through the event loop's run queue a call's measured time is assumed to include: the
/// share of its duration that is the gateway's, not the upstream's.
const OWN_DELAY_TRIPS: u32 = 4;

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
    /// answer counts as failed; its duration runs from `sent` (the last attempt's send).
    ///
    /// `own_delay` is the event loop's own scheduling delay (`lag.rs`). A call's measured time
    /// includes a few trips through a saturated run queue (the send handed to the connection,
    /// the answer read, the caller woken), so [`OWN_DELAY_TRIPS`] times that delay is taken off
    /// before the call is judged slow: a saturated gateway must not open the circuits of
    /// healthy upstreams, while an upstream slower than the threshold on top of the gateway's
    /// own delay still counts as slow.
    pub(super) fn finish(
        &mut self,
        outcome: CallOutcome,
        sent: Instant,
        at: Instant,
        own_delay: Duration,
    ) {
        if let (Some(circuit), Some(permit)) = (self.circuit, self.permit.take()) {
            let failed = match outcome {
                CallOutcome::Status(status) => circuit.failure_statuses.contains(status),
                _ => true,
            };
            let took = at
                .saturating_duration_since(sent)
                .saturating_sub(own_delay.saturating_mul(OWN_DELAY_TRIPS));
            circuit.breaker.record(
                permit,
                BreakerOutcome {
                    failed,
                    duration: took,
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
