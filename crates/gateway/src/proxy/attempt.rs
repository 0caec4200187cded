//! The attempts of one call at an upstream's targets: pick a target, send under the route's
//! deadline (and the per-attempt timeout), record how the attempt ended — for the target in one
//! place, for the circuit in one place when the call ends — and decide whether to try again.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response, Uri, Version};
use tokio::time::Instant;

use super::admission::Admitted;
use super::context::{ClientInfo, Record};
use super::forwarding::{downstream_head, request_key};
use crate::body::{BodyClaim, Held, RequestBody, ResponseBody, UpstreamBody};
use crate::edge::GatewayError;
use crate::interim::InterimSink;
use crate::lag::SchedulingLag;
use crate::pool::{CallError, Lease, OwnedHead};
use crate::retry::{AttemptFailure, FailedAttempt, RetryPolicy};
use crate::router::CompiledRoute;
use crate::upstream::{CallOutcome, UpstreamGroup};
use futures_util::future::Either;

/// Attempts of one request when connects fail and the route has no `[routes.retry]`: the first
/// target and up to two others.
const MAX_CONNECT_ATTEMPTS: u32 = 3;

/// What every attempt of one call shares, whichever target it goes to.
pub(super) struct Call<'a> {
    pub(super) route: &'a CompiledRoute,
    pub(super) client: &'a ClientInfo,
    pub(super) claim: &'a BodyClaim,
    pub(super) path_and_query: &'a http::uri::PathAndQuery,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    /// The route's retry policy; `None`: only a failed connect moves on to another target.
    pub(super) retry: Option<&'a RetryPolicy>,
    /// The method and body allow sending the request again.
    pub(super) resendable: bool,
    /// The event loop's own scheduling delay when the request started (`lag.rs`).
    pub(super) own_delay: Duration,
    /// Its probe, read again when the call ends.
    pub(super) lag: &'a SchedulingLag,
    /// Where the upstream's interim (1xx) answers go, when the client connection takes them.
    pub(super) interim: Option<&'a InterimSink>,
    /// The identity whose headers go up with each attempt (not in the request's map yet).
    pub(super) identity: Option<&'a sekisho_auth::Identity>,
    /// The forwarding fields as head lines (not in the request's map); the request id then
    /// goes with them (it is in the map otherwise).
    pub(super) forwarding_lines: Option<&'a [u8]>,
    /// The request's id.
    pub(super) request_id: &'a http::HeaderValue,
    /// The answer's fields may stay as read (`OwnedHead::raw_answer`).
    pub(super) raw_answer: bool,
}

/// What an upstream answer holds until its body is done: its target's in-flight count and the
/// connection it came on.
type AnswerHolds = (Option<Held>, Option<Lease>);

/// What sending to a target gave: the answer head with the connection's lease, or the error.
type Sent = Result<(Response<UpstreamBody>, Option<Lease>), CallError>;

/// A deadline that passed first: `Some(timeout)` the per-attempt one, `None` the route's.
type Expired = Option<Duration>;

/// How one attempt ended, decided where its result is made ([`Ended::of`]).
enum Ended {
    /// The target answered.
    Answered(Response<UpstreamBody>, Option<Lease>),
    /// The attempt failed for a reason that is the target's (or time's).
    Failed {
        /// For the target's figures and the circuit.
        outcome: CallOutcome,
        /// For the retry policy.
        failure: AttemptFailure,
        /// What the client gets if nothing else is tried.
        error: GatewayError,
        /// The route's own deadline passed: nothing is left for another attempt.
        out_of_time: bool,
    },
    /// The client's body was at fault, not the target: nobody's figures change, the circuit
    /// permit is given back.
    ClientFault(GatewayError),
}

impl Ended {
    /// Classifies what the send gave: an answer, a per-attempt timeout (`Err(Some(timeout))`),
    /// the route's deadline (`Err(None)`), or the client's error.
    fn of(result: Result<Sent, Expired>, upstream: &UpstreamGroup, route: &CompiledRoute) -> Self {
        match result {
            Err(expired) => Self::Failed {
                outcome: CallOutcome::Timeout,
                failure: AttemptFailure::Timeout,
                error: GatewayError::UpstreamTimeout {
                    upstream: upstream.name.clone(),
                    timeout: expired.unwrap_or(route.timeout),
                },
                out_of_time: expired.is_none(),
            },
            Ok(Ok((response, lease))) => Self::Answered(response, lease),
            Ok(Err(error)) => {
                let error = GatewayError::from_upstream_call(&upstream.name, error);
                let (outcome, failure) = match &error {
                    GatewayError::UpstreamConnect { .. } => {
                        (CallOutcome::ConnectError, AttemptFailure::ConnectError)
                    }
                    GatewayError::UpstreamFailed { .. } => {
                        (CallOutcome::Broken, AttemptFailure::Status(502))
                    }
                    _ => return Self::ClientFault(error),
                };
                Self::Failed {
                    outcome,
                    failure,
                    error,
                    out_of_time: false,
                }
            }
        }
    }

    /// The outcome for the target's figures, if the target is to be judged.
    fn outcome(&self) -> Option<CallOutcome> {
        match self {
            Self::Answered(response, _) => Some(CallOutcome::Status(response.status().as_u16())),
            Self::Failed { outcome, .. } => Some(*outcome),
            Self::ClientFault(_) => None,
        }
    }
}

/// What the client gets when the attempts are over, and the outcome the circuit records.
enum Last {
    /// The target's answer.
    Answer(Response<UpstreamBody>, AnswerHolds),
    /// The gateway's error.
    Error(GatewayError),
}

impl Call<'_> {
    /// Sends the request to `upstream`, trying again as the call's retry policy allows
    /// (without one, a failed connect moves on to another target), and answers the upstream's
    /// response or the last failure.
    pub(super) async fn send(
        &self,
        upstream: &UpstreamGroup,
        admitted: Admitted<'_>,
        parts: &mut http::request::Parts,
        mut body: RequestBody,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let Self {
            route,
            client,
            claim,
            path_and_query,
            started,
            deadline,
            retry,
            resendable,
            own_delay,
            lag,
            interim,
            identity,
            forwarding_lines,
            request_id,
            raw_answer,
        } = *self;
        let Admitted { mut circuit, slot } = admitted;
        parts.version = match upstream.protocol {
            sekisho_config::UpstreamProtocol::Http1 => Version::HTTP_11,
            sekisho_config::UpstreamProtocol::H2c => Version::HTTP_2,
        };
        let key = upstream
            .hash_key
            .as_ref()
            .and_then(|key| request_key(key, client, &parts.headers, &parts.uri));
        // Without `[routes.retry]`, only a failed connect is tried again, on another target.
        let max_attempts = retry.map_or(MAX_CONNECT_ATTEMPTS, |policy| policy.attempts);

        // One deadline covers every attempt, the backoffs, the response head and the body (the
        // connection's timer, set again: `ClientInfo::deadline_timer`).
        let mut sleep = client.deadline_timer(deadline);
        let mut try_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // Targets that failed this request: the next attempt goes elsewhere when it can.
        let mut failed_targets: Vec<usize> = Vec::new();
        let mut next_target: Option<usize> = None;
        let mut previous_delay = Duration::ZERO;
        let mut attempts: u32 = 0;
        let mut now = started;
        let (last, outcome, finished) = loop {
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
            attempts += 1;
            record.attempts = attempts;
            let target = &upstream.targets[target_index];
            record.target = Some(std::sync::Arc::clone(&target.address));
            let in_flight = upstream.begin(target_index);
            record.sent = Some(now);
            // The gateway writes the request itself (a body held whole, HTTP/1.1) from the head
            // as it is — nothing copied per attempt, the fields kept as head lines written
            // after it —, or builds the request hyper's client writes.
            let whole = target.conn.writes_whole(&body);
            let identity_lines = identity
                .filter(|_| whole)
                .map(super::auth::identity_head)
                .unwrap_or_default();
            let per_attempt = retry
                .and_then(|policy| policy.per_try_timeout)
                .map(|timeout| (timeout, now + timeout))
                .filter(|(_, at)| *at < deadline);
            // The attempt's own deadline, on a timer of the connection's too (set again for
            // each attempt, kept with the call's at the end).
            if let Some((_, at)) = per_attempt {
                match try_timer.as_mut() {
                    Some(timer) => timer.as_mut().reset(at),
                    None => try_timer = Some(client.deadline_timer(at)),
                }
            }
            let attempt_deadline = std::future::poll_fn(|cx| match try_timer.as_mut() {
                Some(timer) if per_attempt.is_some() => timer.as_mut().poll(cx),
                _ => Poll::Pending,
            });
            let result = {
                // Pinned where it is made: `select!` then holds a pointer, where it would move
                // the attempt's future (hundreds of bytes) into its own state — a copy into
                // lines the request had not touched yet, which at hundreds of connections come
                // from beyond the L2 cache (docs/benchmarks.md, session 15). Dropped at the end
                // of this block, as it was inside `select!`.
                let sent = std::pin::pin!(if whole {
                    let head = OwnedHead {
                        method: &parts.method,
                        target: path_and_query,
                        headers: &parts.headers,
                        late_fields: [forwarding_lines.unwrap_or_default(), &identity_lines],
                        request_id: forwarding_lines.map(|_| request_id.as_bytes()),
                        raw_answer,
                    };
                    Either::Left(target.conn.send_whole(head, &mut body, now, interim))
                } else {
                    // A head that may be needed again is copied; the last attempt takes it (an
                    // empty head is left behind, which costs no allocation).
                    let may_retry =
                        attempts < max_attempts && (retry.is_some() || upstream.targets.len() > 1);
                    let mut head = if may_retry {
                        parts.clone()
                    } else {
                        std::mem::replace(parts, Request::new(()).into_parts().0)
                    };
                    // Origin-form: the connection is the target's (h2c adds scheme and
                    // authority).
                    head.uri = Uri::from(path_and_query.clone());
                    if let Some(identity) = identity {
                        super::auth::add_identity(&mut head.headers, identity);
                    }
                    if let Some(lines) = forwarding_lines {
                        super::forwarding::insert_lines(&mut head.headers, lines);
                        head.headers
                            .insert(&crate::request_id::X_REQUEST_ID, request_id.clone());
                    }
                    let request = Request::from_parts(head, body);
                    // Boxed: hyper's client's future is over twice the size of the owned one,
                    // and unboxed every attempt's future (and the call's box, made on every
                    // request) would be that large and copied with it.
                    Either::Right(Box::pin(target.conn.send(request, now, interim)))
                });
                tokio::select! {
                    biased;
                    result = sent => Ok(result),
                    () = sleep.as_mut() => Err(None),
                    () = attempt_deadline => Err(per_attempt.map(|(timeout, _)| timeout)),
                }
            };
            let finished = crate::clock::now();
            let ended = Ended::of(result, upstream, route);
            // The target's figures: recorded here, once per attempt.
            if let Some(outcome) = ended.outcome() {
                if outcome == CallOutcome::ConnectError {
                    upstream.connect_errors.inc();
                }
                let latency = finished.saturating_duration_since(now);
                upstream.record(target_index, outcome, latency, finished);
            }
            // How this attempt failed, and what the client gets if it is not tried again.
            let (failure, last, outcome) = match ended {
                Ended::ClientFault(error) => return Err(error),
                Ended::Failed {
                    outcome,
                    error,
                    out_of_time: true,
                    ..
                } => break (Last::Error(error), outcome, finished),
                Ended::Failed {
                    outcome,
                    failure,
                    error,
                    ..
                } => (failure, Last::Error(error), outcome),
                Ended::Answered(response, lease) => {
                    let status = response.status().as_u16();
                    let outcome = CallOutcome::Status(status);
                    let last = Last::Answer(response, (in_flight, lease));
                    let retry_wanted = retry.is_some_and(|policy| policy.retries_status(status));
                    if !retry_wanted || attempts >= max_attempts {
                        break (last, outcome, finished);
                    }
                    (AttemptFailure::Status(status), last, outcome)
                }
            };

            // Another attempt? Only with the body in hand again, a target, and the policy's
            // consent. Looked at, not taken: a body not sent again stays for a fallback.
            let body_available = attempts < max_attempts && claim.available();
            if !failed_targets.contains(&target_index) {
                failed_targets.push(target_index);
            }
            let other = upstream.pick(key, finished, &failed_targets).ok();
            let decision = match (body_available, retry) {
                (false, _) => Err(()),
                (true, Some(policy)) => policy
                    .decide(&FailedAttempt {
                        failure,
                        attempts,
                        resendable,
                        other_target: other.is_some(),
                        previous_delay,
                        now: finished,
                        deadline,
                    })
                    .map_err(|_| ()),
                // Without a policy a failed connect moves on to another target, nothing else.
                (true, None) if failure == AttemptFailure::ConnectError && other.is_some() => {
                    Ok(Duration::ZERO)
                }
                (true, None) => Err(()),
            };
            let (Ok(delay), Some(again)) = (decision, decision.ok().and_then(|_| claim.reclaim()))
            else {
                break (last, outcome, finished);
            };
            tracing::debug!(
                upstream = %upstream.name,
                target = %target.address,
                failure = failure.label(),
                attempts,
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            // A status answer is given up (its body is not read), and with it its in-flight count.
            drop(last);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            previous_delay = delay;
            body = again;
            now = crate::clock::now();
            // The target that failed is avoided when another is eligible; otherwise the retry
            // goes wherever the balancer says (a single-target upstream retries its one target).
            next_target = if failure == AttemptFailure::ConnectError || delay.is_zero() {
                other
            } else {
                upstream.pick(key, now, &failed_targets).ok()
            };
            if next_target.is_none() && retry.is_none() {
                return Err(GatewayError::NoHealthyUpstream {
                    upstream: upstream.name.clone(),
                });
            }
        };
        // The timers serve the connection's next call — the attempt's kept first, so that the
        // next call takes the call's first (each then moves to a later deadline: no new place in
        // tokio's wheel); the head's map, the next head read on this thread.
        if let Some(timer) = try_timer {
            client.keep_deadline_timer(timer);
        }
        client.keep_deadline_timer(sleep);
        sekisho_h1::recycle(std::mem::take(&mut parts.headers));
        // The circuit's record: here, once per call that reached a target and ended.
        // Its duration is the upstream's: from the last attempt's send to its end, not the
        // bulkhead's queue, the body's buffering or the backoffs before it.
        circuit.finish(
            outcome,
            record.sent.unwrap_or(started),
            finished,
            own_delay.max(lag.own_delay()),
        );
        match last {
            Last::Answer(response, holds) => {
                record.answered = Some(finished);
                Ok(downstream_response(route, response, deadline, holds, slot))
            }
            Last::Error(error) => Err(error),
        }
    }
}

/// The upstream's answer on its way down: its head as the client gets it, its body bounded by
/// the route's deadline and holding its target's in-flight count, its connection and the
/// bulkhead slot until it is done.
fn downstream_response(
    route: &CompiledRoute,
    mut response: Response<UpstreamBody>,
    deadline: Instant,
    (in_flight, lease): AnswerHolds,
    slot: Option<sekisho_policy::bulkhead::Slot>,
) -> Response<ResponseBody> {
    downstream_head(route, &mut response);
    let (parts, response_body) = response.into_parts();
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
