//! The edge: the one place where an error becomes an HTTP response.
//!
//! Every error a request can meet travels as a [`GatewayError`] (or boxed inside one) up to
//! [`error_response`], which picks the status, the contract's error code and the JSON body. No
//! other module builds an error response, so the contract's shape cannot drift. Nothing here
//! logs: the error is attached to the response's outcome for the access log.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::{BodyTooLarge, BoxError, ClientBodyError, ResponseBody};

mod json;

pub use json::error_json;
#[cfg(test)]
use json::error_json_display;
use json::error_json_of;

/// Everything that can stop a request inside the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route matches the request.
    #[error("no route for {method} {path}")]
    NoRoute {
        /// The request's method.
        method: http::Method,
        /// The request's path.
        path: String,
    },
    /// The request is malformed or ambiguous.
    #[error("{0}")]
    BadRequest(String),
    /// The request body is over the limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// The request line and headers are over the limit.
    #[error("request headers are larger than the limit of {limit} bytes")]
    HeadersTooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// No target of the upstream could take the request.
    #[error("upstream `{upstream}` has no healthy target")]
    NoHealthyUpstream {
        /// The upstream's name.
        upstream: Arc<str>,
    },
    /// The connection to a target failed.
    #[error("upstream `{upstream}` could not be reached")]
    UpstreamConnect {
        /// The upstream's name.
        upstream: Arc<str>,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The target failed after the connection was made (reset, malformed answer).
    #[error("upstream `{upstream}` failed to answer")]
    UpstreamFailed {
        /// The upstream's name.
        upstream: Arc<str>,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The upstream's circuit is open: rejected at once.
    #[error("upstream `{upstream}` is failing; its circuit is open")]
    CircuitOpen {
        /// The upstream's name.
        upstream: Arc<str>,
        /// Until the circuit lets a probe through.
        retry_after: Duration,
    },
    /// The upstream's bulkhead is full: every slot taken and the queue full, or no slot came
    /// free within `max_wait`.
    #[error("upstream `{upstream}` has all its {max_concurrent} slots in use")]
    BulkheadFull {
        /// The upstream's name.
        upstream: Arc<str>,
        /// Its limit.
        max_concurrent: u32,
    },
    /// A rate limit refused the request: it was reached, or (`unchecked`) its store did not
    /// answer and `on_store_error = "deny"` refuses what cannot be checked.
    #[error("{}", rate_limited_message(scope, decision, *unchecked))]
    RateLimited {
        /// The route's name, or `*` for the server-wide limit.
        scope: Arc<str>,
        /// The refusal, with when to come back.
        decision: sekisho_policy::ratelimit::Decision,
        /// The limit could not be checked: its store did not answer.
        unchecked: bool,
    },
    /// The route's adaptive concurrency limit is reached: the gateway sheds the call at once
    /// rather than queue it behind calls that are already slow.
    #[error("route `{route}` is at its concurrency limit ({limit} in flight)")]
    Overloaded {
        /// The route's name.
        route: Arc<str>,
        /// The limit at the time.
        limit: u32,
    },
    /// The gateway itself is overloaded (`[server.overload]`): its event loop runs further
    /// behind than `max_loop_delay`, so the request is refused before routing.
    #[error("the gateway is overloaded (its event loop runs {} behind)", sekisho_config::format_duration(*.delay))]
    GatewayOverloaded {
        /// The loop's delay at the time.
        delay: Duration,
    },
    /// The client did not send its body before the route's deadline (the body was being read
    /// whole, to be resent by a retry if need be).
    #[error("the request body did not arrive within {}", sekisho_config::format_duration(*.timeout))]
    RequestTimeout {
        /// The deadline in force.
        timeout: Duration,
    },
    /// No credentials, bad ones, or an expired or revoked token (a login refused, a route with
    /// `auth` without a valid session).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid session without the permission or role the route asks for.
    #[error("{0}")]
    Forbidden(String),
    /// Logins for this account or from this address are locked after too many failures.
    #[error("too many failed logins; try again in {}s", retry_after.as_secs().max(1))]
    LoginLocked {
        /// Until the lockout ends.
        retry_after: Duration,
    },
    /// Every password-hashing slot is busy and its queue is full: the login is refused at once
    /// rather than starve the proxy.
    #[error("too many logins at once; try again shortly")]
    HashingOverloaded,
    /// The identity store (database or session store) failed.
    #[error("authentication is unavailable")]
    AuthUnavailable(#[source] BoxError),
    /// The route's deadline passed before the upstream answered.
    #[error("upstream `{upstream}` did not answer within {}", sekisho_config::format_duration(*.timeout))]
    UpstreamTimeout {
        /// The upstream's name.
        upstream: Arc<str>,
        /// The deadline in force.
        timeout: Duration,
    },
    /// The request said `only-if-cached` and nothing stored answers it (RFC 9111 §5.2.1.7:
    /// 504).
    #[error(
        "route `{route}` has no cached answer and the request allows no other (only-if-cached)"
    )]
    NotCached {
        /// The route's name.
        route: Arc<str>,
    },
    /// A cached answer that demands revalidation (`must-revalidate`, `proxy-revalidate`,
    /// `s-maxage`, `no-cache`) is stale and the upstream could not confirm it: RFC 9111
    /// §5.2.2.2 asks for a 504 rather than the stale copy.
    #[error("upstream `{upstream}` could not revalidate a cached answer that demands it")]
    Unrevalidated {
        /// The route's name.
        upstream: Arc<str>,
        /// How the upstream failed.
        #[source]
        source: Box<GatewayError>,
    },
}

/// The message of a rate limit's refusal: a client must be able to tell a limit reached from a
/// limit that could not be checked.
fn rate_limited_message(
    scope: &str,
    decision: &sekisho_policy::ratelimit::Decision,
    unchecked: bool,
) -> String {
    if unchecked {
        format!(
            "rate limit of `{scope}` could not be checked (its store did not answer) and is set \
             to refuse then"
        )
    } else {
        format!(
            "rate limit of `{scope}` reached: {} per its window",
            decision.limit
        )
    }
}

impl GatewayError {
    /// The contract's error code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "NO_ROUTE",
            Self::BadRequest(_) => "BAD_REQUEST",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::HeadersTooLarge { .. } => "HEADERS_TOO_LARGE",
            Self::NoHealthyUpstream { .. } => "NO_HEALTHY_UPSTREAM",
            Self::CircuitOpen { .. } => "CIRCUIT_OPEN",
            Self::BulkheadFull { .. } => "BULKHEAD_FULL",
            Self::Overloaded { .. } | Self::GatewayOverloaded { .. } => "OVERLOADED",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::UpstreamConnect { .. } | Self::UpstreamFailed { .. } => "UPSTREAM_ERROR",
            Self::UpstreamTimeout { .. } | Self::Unrevalidated { .. } | Self::NotCached { .. } => {
                "UPSTREAM_TIMEOUT"
            }
            Self::RequestTimeout { .. } => "REQUEST_TIMEOUT",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::LoginLocked { .. } => "RATE_LIMITED",
            Self::HashingOverloaded => "OVERLOADED",
            Self::AuthUnavailable(_) => "AUTH_UNAVAILABLE",
        }
    }

    /// Whether the upstream failed or could not be called (what `stale-if-error` covers): no
    /// target, an open circuit, a full bulkhead, a connect or answer error, a timeout.
    pub(crate) fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            Self::NoHealthyUpstream { .. }
                | Self::UpstreamConnect { .. }
                | Self::UpstreamFailed { .. }
                | Self::CircuitOpen { .. }
                | Self::BulkheadFull { .. }
                | Self::UpstreamTimeout { .. }
        )
    }

    /// The HTTP status the contract gives the code.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoHealthyUpstream { .. }
            | Self::CircuitOpen { .. }
            | Self::BulkheadFull { .. }
            | Self::Overloaded { .. }
            | Self::GatewayOverloaded { .. }
            | Self::HashingOverloaded
            | Self::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UpstreamConnect { .. } | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } | Self::Unrevalidated { .. } | Self::NotCached { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } | Self::LoginLocked { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Seconds a client should wait before trying again, where the error implies one.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NoHealthyUpstream { .. }
            | Self::Overloaded { .. }
            | Self::GatewayOverloaded { .. }
            | Self::HashingOverloaded
            | Self::AuthUnavailable(_) => Some(Duration::from_secs(1)),
            Self::LoginLocked { retry_after } => Some(Duration::from_secs(
                (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1),
            )),
            // Whole seconds, rounded up: never "0", which a client would take as "now".
            Self::CircuitOpen { retry_after, .. } => Some(Duration::from_secs(
                retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
            )),
            Self::RateLimited { decision, .. } => {
                let after = decision.retry_after;
                Some(Duration::from_secs(
                    (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1),
                ))
            }
            _ => None,
        }
    }

    /// The error and its causes in one line, for the access log.
    pub(crate) fn detail(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// Sorts out why a call to an upstream failed, by walking the error's causes: a body over
    /// the limit or a broken client body is the client's fault, a connect error or any other
    /// failure is the upstream's.
    pub(crate) fn from_upstream_call(upstream: &Arc<str>, error: crate::pool::CallError) -> Self {
        if let Some(fault) = Self::client_body_fault(&error) {
            return fault;
        }
        if error.is_connect() {
            Self::UpstreamConnect {
                upstream: upstream.clone(),
                source: Box::new(error),
            }
        } else {
            Self::UpstreamFailed {
                upstream: upstream.clone(),
                source: Box::new(error),
            }
        }
    }
}

impl From<sekisho_auth::AuthError> for GatewayError {
    /// What an auth operation's failure is at the edge.
    fn from(error: sekisho_auth::AuthError) -> Self {
        use sekisho_auth::AuthError;
        match error {
            AuthError::Unauthenticated(message) => Self::Unauthenticated(message),
            AuthError::Forbidden(message) => Self::Forbidden(message),
            AuthError::Locked { retry_after } => Self::LoginLocked { retry_after },
            AuthError::Overloaded => Self::HashingOverloaded,
            AuthError::BadRequest(message)
            | AuthError::NotFound(message)
            | AuthError::Conflict(message) => Self::BadRequest(message),
            other => Self::AuthUnavailable(Box::new(other)),
        }
    }
}

impl GatewayError {
    /// Why reading the client's body failed: over the limit, or broken.
    pub(crate) fn from_client_body(error: &BoxError) -> Self {
        Self::client_body_fault(error.as_ref()).unwrap_or_else(|| {
            Self::BadRequest(format!("the request body could not be read: {error}"))
        })
    }

    /// The client's fault among `error`'s causes, if any.
    fn client_body_fault(error: &(dyn StdError + 'static)) -> Option<Self> {
        let mut cause: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(current) = cause {
            if let Some(too_large) = current.downcast_ref::<BodyTooLarge>() {
                return Some(Self::PayloadTooLarge {
                    limit: too_large.limit,
                });
            }
            if let Some(client) = current.downcast_ref::<ClientBodyError>() {
                return Some(Self::BadRequest(format!(
                    "the request body could not be read: {client}"
                )));
            }
            cause = current.source();
        }
        None
    }
}

/// What the gateway answers for an error, before it is a response: the status, `Retry-After`
/// in whole seconds when the error has one, and the contract's JSON body.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The answer's status.
    pub status: StatusCode,
    /// `Retry-After`, seconds (at least 1).
    pub retry_after: Option<u64>,
    /// The JSON body (`application/json`).
    pub body: Bytes,
}

impl Refusal {
    /// The answer for `error` to the request `request_id`.
    pub(crate) fn of(error: &GatewayError, request_id: &[u8]) -> Self {
        Self {
            status: error.status(),
            retry_after: error.retry_after().map(|after| after.as_secs().max(1)),
            body: error_json_of(error, std::str::from_utf8(request_id).unwrap_or("")),
        }
    }
}

/// The response the gateway gives for `error`.
pub(crate) fn error_response(
    error: &GatewayError,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let refusal = Refusal::of(error, request_id.as_bytes());
    let mut response = Response::new(ResponseBody::full(refusal.body));
    *response.status_mut() = refusal.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(after) = refusal.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(after));
    }
    response
}

/// hyper answers requests it cannot parse by itself, with an empty body. The connection layer
/// swaps that answer for this one, so a malformed request gets the contract's JSON too.
pub(crate) fn raw_error_for_status(status: u16, request_id: &str) -> Option<Vec<u8>> {
    let (reason, code, message) = match status {
        400 => (
            "Bad Request",
            "BAD_REQUEST",
            "the request could not be parsed",
        ),
        414 => (
            "URI Too Long",
            "BAD_REQUEST",
            "the request target is too long",
        ),
        431 => (
            "Request Header Fields Too Large",
            "HEADERS_TOO_LARGE",
            "request headers are too large",
        ),
        _ => return None,
    };
    let body = error_json(code, message, request_id);
    let mut raw = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {request_id}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusals written without `core::fmt` say exactly what their `Display` says, escaped
    /// as serde_json escapes it (a name with a quote or a backslash included).
    #[test]
    fn refusals_written_directly_match_their_display() {
        for name in ["orders", "we\"ird\\name\u{1}"] {
            let name: Arc<str> = Arc::from(name);
            for error in [
                GatewayError::Overloaded {
                    route: Arc::clone(&name),
                    limit: 17,
                },
                GatewayError::BulkheadFull {
                    upstream: Arc::clone(&name),
                    max_concurrent: 64,
                },
                GatewayError::CircuitOpen {
                    upstream: Arc::clone(&name),
                    retry_after: Duration::from_secs(3),
                },
                GatewayError::NoHealthyUpstream {
                    upstream: Arc::clone(&name),
                },
            ] {
                let direct = error_json_of(&error, "rid");
                let formatted = error_json_display(error.code(), &error, "rid");
                assert_eq!(direct, formatted, "{error:?}");
                let parsed: serde_json::Value = serde_json::from_slice(&direct).unwrap_or_default();
                assert_eq!(parsed["error"]["message"], error.to_string());
            }
        }
        let mut out = Vec::new();
        assert!(!GatewayError::BadRequest("x".into()).write_message(&mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn every_error_maps_to_the_contract_code_and_status() {
        let upstream: Arc<str> = Arc::from("orders");
        let cases: Vec<(GatewayError, &str, u16)> = vec![
            (
                GatewayError::NoRoute {
                    method: http::Method::GET,
                    path: "/x".into(),
                },
                "NO_ROUTE",
                404,
            ),
            (GatewayError::BadRequest("x".into()), "BAD_REQUEST", 400),
            (
                GatewayError::PayloadTooLarge { limit: 1 },
                "PAYLOAD_TOO_LARGE",
                413,
            ),
            (
                GatewayError::HeadersTooLarge { limit: 1 },
                "HEADERS_TOO_LARGE",
                431,
            ),
            (
                GatewayError::NoHealthyUpstream {
                    upstream: upstream.clone(),
                },
                "NO_HEALTHY_UPSTREAM",
                503,
            ),
            (
                GatewayError::UpstreamConnect {
                    upstream: upstream.clone(),
                    source: "refused".into(),
                },
                "UPSTREAM_ERROR",
                502,
            ),
            (
                GatewayError::UpstreamTimeout {
                    upstream,
                    timeout: Duration::from_secs(3),
                },
                "UPSTREAM_TIMEOUT",
                504,
            ),
        ];
        for (error, code, status) in cases {
            let response = error_response(&error, &HeaderValue::from_static("rid-1"));
            assert_eq!(response.status().as_u16(), status, "{error}");
            assert_eq!(error.code(), code);
            assert_eq!(
                response.headers()[CONTENT_TYPE],
                HeaderValue::from_static("application/json")
            );
        }
    }

    #[test]
    fn the_json_has_the_contract_shape_and_escapes() {
        let body = error_json("NO_ROUTE", "no route for GET /\"x\"", "abc");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["status"], "error");
        assert_eq!(value["error"]["code"], "NO_ROUTE");
        assert_eq!(value["error"]["message"], "no route for GET /\"x\"");
        assert_eq!(value["error"]["request_id"], "abc");
    }

    #[test]
    fn the_hand_written_json_is_the_one_serde_json_writes() {
        for (code, message, id) in [
            (
                "OVERLOADED",
                "route `bench` is at its concurrency limit (1 in flight)",
                "0a1b",
            ),
            (
                "BAD_REQUEST",
                "quote \" backslash \\ tab \t nul \u{0} del \u{7f}",
                "id\n",
            ),
            ("NO_ROUTE", "non-ASCII: 関所 / slash", ""),
        ] {
            let ours = error_json(code, message, id);
            #[derive(serde::Serialize)]
            struct Envelope<'a> {
                status: &'a str,
                error: Body<'a>,
            }
            #[derive(serde::Serialize)]
            struct Body<'a> {
                code: &'a str,
                message: &'a str,
                request_id: &'a str,
            }
            let serde = serde_json::to_vec(&Envelope {
                status: "error",
                error: Body {
                    code,
                    message,
                    request_id: id,
                },
            })
            .expect("serde_json");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&serde),
                "{message:?}"
            );
        }
    }

    #[test]
    fn raw_errors_are_complete_http_responses() {
        let raw = raw_error_for_status(431, "r1").expect("431 is known");
        let text = String::from_utf8(raw).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("HEADERS_TOO_LARGE"));
        assert!(raw_error_for_status(500, "r1").is_none());
    }
}
