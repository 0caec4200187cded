//! A route's fallback (`[routes.fallback]`, an extension of the contract): what answers when the
//! route's upstream cannot — an alternate upstream, a static answer, or the alternate first and
//! the static answer if the alternate fails too.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use prometheus_client::metrics::counter::Counter;

use crate::body::ResponseBody;
use crate::edge::GatewayError;
use crate::upstream::UpstreamGroup;
use sekisho_config::FallbackOn;

/// Marks an answer that came from a fallback: `upstream` or `static`.
pub(crate) static X_SEKISHO_FALLBACK: HeaderName = HeaderName::from_static("x-sekisho-fallback");

/// Which fallback answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FallbackKind {
    /// The alternate upstream.
    Upstream,
    /// The static answer.
    Static,
}

/// A route's compiled fallback.
#[derive(Debug)]
pub(crate) struct Fallback {
    on: Vec<FallbackOn>,
    /// The alternate upstream.
    pub upstream: Option<Arc<UpstreamGroup>>,
    /// The static answer.
    pub answer: Option<StaticAnswer>,
    /// Fallbacks taken: [upstream, static].
    counters: [Counter; 2],
}

impl Fallback {
    /// Compiles `config`; `alternate` is its upstream, resolved.
    pub(crate) fn new(
        config: &sekisho_config::Fallback,
        alternate: Option<Arc<UpstreamGroup>>,
        counters: [Counter; 2],
    ) -> Self {
        let answer = config.has_static().then(|| {
            let mut headers = HeaderMap::new();
            for (name, value) in &config.headers {
                if let Ok(value) = HeaderValue::from_str(&value.0) {
                    headers.insert(name.to_header_name(), value);
                }
            }
            if let Ok(content_type) = HeaderValue::from_str(&config.content_type.0) {
                headers.insert(CONTENT_TYPE, content_type);
            }
            headers.insert(&X_SEKISHO_FALLBACK, HeaderValue::from_static("static"));
            StaticAnswer {
                status: config
                    .status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::OK),
                headers,
                body: Bytes::from(config.body.clone().unwrap_or_default()),
            }
        });
        Self {
            on: config.on.clone(),
            upstream: alternate,
            answer,
            counters,
        }
    }

    /// Whether the fallback answers instead of `result`.
    pub(crate) fn covers(&self, result: &Result<Response<ResponseBody>, GatewayError>) -> bool {
        let mut error = match result {
            Ok(response) => {
                return self
                    .on
                    .contains(&FallbackOn::Status(response.status().as_u16()))
            }
            Err(error) => error,
        };
        // A cached answer the upstream could not revalidate: the fallback sees why.
        while let GatewayError::Unrevalidated { source, .. } = error {
            error = source;
        }
        let condition = match error {
            GatewayError::CircuitOpen { .. } => FallbackOn::CircuitOpen,
            GatewayError::BulkheadFull { .. } => FallbackOn::BulkheadFull,
            GatewayError::NoHealthyUpstream { .. } => FallbackOn::NoHealthyUpstream,
            GatewayError::UpstreamTimeout { .. } => FallbackOn::Timeout,
            GatewayError::UpstreamConnect { .. } | GatewayError::UpstreamFailed { .. } => {
                FallbackOn::UpstreamError
            }
            // The client's fault: no fallback hides it.
            _ => return false,
        };
        self.on.contains(&condition)
    }

    /// Counts a fallback taken.
    pub(crate) fn count(&self, kind: FallbackKind) {
        self.counters[kind as usize].inc();
    }
}

/// A fixed answer.
#[derive(Debug)]
pub(crate) struct StaticAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl StaticAnswer {
    /// A fresh copy of the answer (the body is shared, not copied).
    pub(crate) fn response(&self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}
