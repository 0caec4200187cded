//! The HTTP side of the generator: what a request is (`Endpoint`), the client that sends it
//! (keep-alive HTTP/1.1 over the generator's own pool, `h1_pool.rs`, or HTTP/2 with prior
//! knowledge over hyper-util's client), and one exchange read to its end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::h1_pool::{Connection, H1Pool, SendError};
use super::recorder::Outcome;
use crate::LoadError;

/// One kind of request of a run, with its own figures in the report.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its name in the report (e.g. `GET /api/orders`).
    pub name: String,
    /// Method.
    pub method: Method,
    /// Absolute `http://` URI.
    pub uri: Uri,
    /// Header fields sent with each request.
    pub headers: HeaderMap,
    /// Body sent with each request.
    pub body: Bytes,
    /// Share of the arrivals, relative to the other endpoints' weights.
    pub weight: u32,
    /// Statuses that count as success (inclusive); anything else is an error of this endpoint.
    pub accept: (u16, u16),
    /// Whether its figures count towards the run's criteria.
    pub judged: bool,
}

impl Endpoint {
    /// A GET of `url`, judged, 2xx and 3xx accepted.
    pub fn get(url: &str) -> Result<Self, LoadError> {
        let uri = parse_url(url)?;
        Ok(Self {
            name: format!("GET {}", uri.path()),
            method: Method::GET,
            uri,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            weight: 1,
            accept: (200, 399),
            judged: true,
        })
    }
}

/// Parses a target URL: `http://host:port/path?query`, nothing else.
pub fn parse_url(url: &str) -> Result<Uri, LoadError> {
    let bad = |why: &str| LoadError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("TLS is not supported; use an http:// URL")),
        Some(_) => return Err(bad("only http:// URLs are supported")),
        None => return Err(bad("no scheme; write it as http://host:port/path")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// Which HTTP version the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// HTTP/1.1 over a pool of keep-alive connections, one request per connection at a time.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c): requests multiplexed over one connection per host.
    Http2,
}

/// The pooled client of a run.
#[derive(Debug, Clone)]
pub(crate) struct LoadClient {
    /// h2, and the control requests (chaos, metrics) of either version.
    client: Client<HttpConnector, Full<Bytes>>,
    /// HTTP/1.1: the run's requests.
    h1: Option<Arc<H1Pool>>,
    timeout: Duration,
    /// HTTP/1.1: one permit per connection of the pool; a request holds one from its send to
    /// its answer's last byte.
    connections: Option<Arc<Semaphore>>,
}

impl LoadClient {
    /// A client whose requests time out after `timeout`; over HTTP/1.1 with at most
    /// `connections` connections (and so requests in flight) at once, when given.
    pub(crate) fn new(version: HttpVersion, timeout: Duration, connections: Option<usize>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        // Like a browser or a service's HTTP client: connections stay open and are reused, and
        // there are at most so many of them. Without that bound a server that slows down would
        // be met with ever more new connections (a storm no real client pool makes), and the
        // generator would spend its time connecting.
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(usize::MAX);
        if version == HttpVersion::Http2 {
            builder.http2_only(true).timer(TokioTimer::new());
        }
        let connections = match version {
            // h2 multiplexes every request over one connection; the server bounds its streams.
            HttpVersion::Http2 => None,
            HttpVersion::Http1 => {
                connections.map(|n| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS))))
            }
        };
        let h1 = match version {
            HttpVersion::Http1 => Some(Arc::new(H1Pool::new(timeout))),
            HttpVersion::Http2 => None,
        };
        Self {
            client: builder.build(connector),
            h1,
            timeout,
            connections,
        }
    }

    /// Sends `endpoint`'s request and reads the answer to its end, within the timeout; the
    /// outcome, and when the answer's last byte came (or the timeout struck).
    pub(crate) async fn exchange(&self, endpoint: &Endpoint) -> (Outcome, Instant) {
        let (outcome, _, answered) = self.exchange_request(request_of(endpoint), false).await;
        (outcome, answered)
    }

    /// Sends `request` and reads the answer to its end, within the timeout; with `keep_body`,
    /// a successful answer's body (at most 64 KiB) is returned too (a login's tokens). The
    /// instant is the answer's end: giving the connection back to the pool comes after it and
    /// is not charged to the request.
    pub(crate) async fn exchange_request(
        &self,
        request: http::Request<Full<Bytes>>,
        keep_body: bool,
    ) -> (Outcome, Option<Bytes>, Instant) {
        // Waiting for a free connection is part of the request's time, as in any client pool.
        let exchange = async {
            let permit = match &self.connections {
                Some(connections) => match connections.acquire().await {
                    Ok(permit) => Some(permit),
                    Err(_) => return (Outcome::Transport, None, None, None),
                },
                None => None,
            };
            let (outcome, body, connection) = self.send(request, keep_body).await;
            (outcome, body, connection, permit)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok((outcome, body, connection, permit)) => {
                let answered = Instant::now();
                if let (Some(pool), Some(connection)) = (&self.h1, connection) {
                    // Back before the permit: never more connections than permits.
                    pool.put(connection).await;
                }
                drop(permit);
                (outcome, body, answered)
            }
            Err(_) => (Outcome::Timeout, None, Instant::now()),
        }
    }

    /// Sends `request` and reads its answer; over HTTP/1.1, also the connection to give back
    /// when the answer was read to its end.
    async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
        keep_body: bool,
    ) -> (Outcome, Option<Bytes>, Option<Connection>) {
        let Some(pool) = &self.h1 else {
            let (outcome, body) = match self.client.request(request).await {
                Ok(response) => read_answer(response, keep_body).await,
                Err(error) if error.is_connect() => (Outcome::Connect, None),
                Err(_) => (Outcome::Transport, None),
            };
            return (outcome, body, None);
        };
        let (response, connection) = match pool.send(request).await {
            Ok(sent) => sent,
            Err(SendError::Connect) => return (Outcome::Connect, None, None),
            Err(SendError::Transport) => return (Outcome::Transport, None, None),
        };
        let (outcome, body) = read_answer(response, keep_body).await;
        // Only a connection whose answer was read to its end may carry the next request.
        let reusable = !matches!(outcome, Outcome::Transport);
        (outcome, body, reusable.then_some(connection))
    }

    /// A control request (chaos, metrics) outside the run's figures: the status and the body.
    pub(crate) async fn fetch(
        &self,
        method: Method,
        uri: Uri,
        body: Bytes,
    ) -> Result<(u16, Bytes), String> {
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = http_body_util::Limited::new(response.into_body(), 16 * 1024 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

/// One exchange of `endpoint`'s request on `pool` (a connection task's own, `open.rs`), read to
/// its end within `timeout`: the outcome and when it ended. The connection goes back to `pool`
/// when it can carry the next request.
pub(crate) async fn exchange_on(
    pool: &H1Pool,
    endpoint: &Endpoint,
    timeout: Duration,
) -> (Outcome, Instant) {
    let exchange = async {
        match pool.send(request_of(endpoint)).await {
            Ok((response, connection)) => {
                let (outcome, _) = read_answer(response, false).await;
                let reusable = !matches!(outcome, Outcome::Transport);
                (outcome, reusable.then_some(connection))
            }
            Err(SendError::Connect) => (Outcome::Connect, None),
            Err(SendError::Transport) => (Outcome::Transport, None),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok((outcome, connection)) => {
            let answered = Instant::now();
            if let Some(connection) = connection {
                pool.put(connection).await;
            }
            (outcome, answered)
        }
        Err(_) => (Outcome::Timeout, Instant::now()),
    }
}

/// Reads an answer to its end: its status, and its contract code when it is a JSON error; with
/// `keep_body`, a successful answer's body (at most 64 KiB) too.
async fn read_answer(
    response: http::Response<Incoming>,
    keep_body: bool,
) -> (Outcome, Option<Bytes>) {
    let (head, body) = response.into_parts();
    let status = head.status.as_u16();
    let json_error = status >= 400
        && head
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
    // Only an error's body (to read its contract code) or a body asked for is kept; others are
    // counted and dropped frame by frame.
    if json_error || (keep_body && status < 400) {
        let Ok(collected) = http_body_util::Limited::new(body, 64 * 1024)
            .collect()
            .await
        else {
            return (Outcome::Transport, None);
        };
        let bytes = collected.to_bytes();
        if json_error {
            let code = contract_code(&bytes);
            return (Outcome::Answered { status, code }, None);
        }
        return (Outcome::Answered { status, code: None }, Some(bytes));
    }
    let mut body = body;
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return (Outcome::Transport, None);
        }
    }
    (Outcome::Answered { status, code: None }, None)
}

/// The request `endpoint` describes.
fn request_of(endpoint: &Endpoint) -> http::Request<Full<Bytes>> {
    let mut request = http::Request::new(Full::new(endpoint.body.clone()));
    *request.method_mut() = endpoint.method.clone();
    *request.uri_mut() = endpoint.uri.clone();
    *request.headers_mut() = endpoint.headers.clone();
    request
}

/// The contract code of a gateway error body (`{"error":{"code":"CIRCUIT_OPEN",…}}`).
fn contract_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["error"]["code"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_with_a_reason() {
        assert!(parse_url("http://127.0.0.1:8080/x").is_ok());
        for (url, why) in [
            ("https://example.com/", "TLS"),
            ("127.0.0.1:8080", "scheme"),
            ("ftp://x/", "only http"),
            ("not a url", "not a URL"),
        ] {
            let error = parse_url(url).expect_err(url).to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn contract_codes_are_read_from_error_bodies() {
        assert_eq!(
            contract_code(br#"{"error":{"code":"CIRCUIT_OPEN","message":"x"}}"#).as_deref(),
            Some("CIRCUIT_OPEN")
        );
        assert_eq!(contract_code(b"oops"), None);
        assert_eq!(contract_code(br#"{"status":"degraded"}"#), None);
    }
}
