//! The chaos upstream: an HTTP service whose latency, error rate, hangs and resets can be changed
//! while it runs, for demos and for the gateway's own tests.
//!
//! `POST /_chaos` with any of `{"latency_ms", "error_rate", "hang", "reset"}` changes only those
//! fields; `GET /_chaos` shows them (and the request count). `/_chaos` itself is never subject to
//! chaos. Every other request, in order: `reset` closes the connection without an answer (RST),
//! `hang` never answers, then `latency_ms` passes, then `error_rate` of requests get a 500, and
//! the rest are answered: `GET /bytes/N` streams N bytes, a request with a body is echoed as it
//! streams in, anything else gets a JSON description of the request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

/// How to start a chaos upstream.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Latency added to every request.
    pub latency: Duration,
    /// Share of requests answered 500.
    pub error_rate: f64,
    /// Name in answers and in `x-upstream`; default: the listen address.
    pub name: Option<String>,
}

/// The chaos in force.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ChaosState {
    /// Latency added to each request, in milliseconds.
    pub latency_ms: u64,
    /// Share of requests answered 500, 0 to 1.
    pub error_rate: f64,
    /// Never answer.
    pub hang: bool,
    /// Close connections without answering.
    pub reset: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<ChaosState>,
    requests: AtomicU64,
    name: String,
}

/// Reads and changes a running chaos upstream from the same process.
#[derive(Debug, Clone)]
pub struct ChaosHandle {
    shared: Arc<Shared>,
}

impl ChaosHandle {
    /// The chaos in force.
    pub fn state(&self) -> ChaosState {
        *self
            .shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the chaos in force.
    pub fn set(&self, state: ChaosState) {
        *self
            .shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }

    /// Requests received, `/_chaos` excluded.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

/// A bound chaos upstream, not yet serving.
#[derive(Debug)]
pub struct ChaosServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ChaosServer {
    /// Binds `options.listen`.
    pub async fn bind(options: ChaosOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind(options.listen).await?;
        let local_addr = listener.local_addr()?;
        let name = options.name.unwrap_or_else(|| local_addr.to_string());
        Ok(Self {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                state: Mutex::new(ChaosState {
                    latency_ms: options.latency.as_millis() as u64,
                    error_rate: options.error_rate.clamp(0.0, 1.0),
                    hang: false,
                    reset: false,
                }),
                requests: AtomicU64::new(0),
                name,
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to read and change the chaos.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until `shutdown` resolves, then stops accepting and returns.
    ///
    /// Requests held by `hang` are dropped (their connections closed) as soon as `shutdown`
    /// resolves; other connections are given up to 5 s to finish, then dropped.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // `closing` releases the hanging requests when the server shuts down; `abort` drops the
        // connections still open once the grace period is over.
        let (closing, _) = tokio::sync::watch::channel(false);
        let (abort, _) = tokio::sync::watch::channel(false);
        crate::serve::serve(&self.listener, "chaos upstream", shutdown, |stream| {
            let _ = stream.set_nodelay(true);
            serve_connection(
                Arc::clone(&self.shared),
                stream,
                graceful.watcher(),
                closing.subscribe(),
                abort.subscribe(),
            )
        })
        .await;
        drop(self.listener);
        closing.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
        abort.send_replace(true);
        Ok(())
    }
}

/// Resolves once `signal` turns true, or once its sender is gone.
async fn raised(mut signal: tokio::sync::watch::Receiver<bool>) {
    let _ = signal.wait_for(|raised| *raised).await;
}

/// The connection's socket, which turns its close into an RST when the chaos asks for a reset.
struct ChaosIo {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ChaosIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // SO_LINGER 0: closing discards what is unsent and answers with an RST. Only for a
            // reset: on any other close it could truncate an answer still in the send buffer.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl tokio::io::AsyncRead for ChaosIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ChaosIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// What a request needs from its connection besides the shared state.
#[derive(Clone)]
struct ConnectionContext {
    shared: Arc<Shared>,
    /// Set before `reset_now` is signalled: the socket's drop must send an RST.
    reset: Arc<AtomicBool>,
    reset_now: Arc<tokio::sync::Notify>,
    closing: tokio::sync::watch::Receiver<bool>,
}

/// A hanging request given up because the server is shutting down.
#[derive(Debug)]
struct GaveUp;

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("chaos upstream shutting down")
    }
}

impl std::error::Error for GaveUp {}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    watcher: hyper_util::server::graceful::Watcher,
    closing: tokio::sync::watch::Receiver<bool>,
    abort: tokio::sync::watch::Receiver<bool>,
) {
    // The reset decision is taken by a request, but the socket belongs to hyper: the request
    // marks the socket and wakes this task, which drops the connection (and so the socket).
    let context = ConnectionContext {
        shared,
        reset: Arc::new(AtomicBool::new(false)),
        reset_now: Arc::new(tokio::sync::Notify::new()),
        closing,
    };
    let io = ChaosIo {
        stream,
        reset: Arc::clone(&context.reset),
    };
    let reset_now = Arc::clone(&context.reset_now);
    let service = service_fn(move |request| {
        let context = context.clone();
        async move { answer(&context, request).await }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = watcher.watch(
        builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned(),
    );
    tokio::select! {
        _ = connection => {}
        () = reset_now.notified() => {}
        () = raised(abort) => {}
    }
}

type ChaosBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(bytes: impl Into<Bytes>) -> ChaosBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn json_answer(
    shared: &Shared,
    status: StatusCode,
    value: &serde_json::Value,
) -> Response<ChaosBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(name) = HeaderValue::from_str(&shared.name) {
        response.headers_mut().insert("x-upstream", name);
    }
    response
}

async fn answer(
    context: &ConnectionContext,
    request: Request<Incoming>,
) -> Result<Response<ChaosBody>, GaveUp> {
    let shared = &*context.shared;
    if request.uri().path() == "/_chaos" {
        return Ok(chaos_endpoint(shared, request).await);
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let state = *shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if state.reset {
        drop(request);
        context.reset.store(true, Ordering::SeqCst);
        // `notify_one` keeps the wake-up if the connection task is not listening yet.
        context.reset_now.notify_one();
        match std::future::pending::<Infallible>().await {}
    }
    if state.hang {
        // Without the request body hyper keeps watching the socket, so a client that gives up
        // ends the connection (and this future with it).
        drop(request);
        raised(context.closing.clone()).await;
        return Err(GaveUp);
    }
    if state.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(state.latency_ms)).await;
    }
    if state.error_rate > 0.0 && fastrand::f64() < state.error_rate {
        return Ok(json_answer(
            shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": "chaos"}),
        ));
    }
    Ok(respond(shared, request))
}

/// The answer to a request the chaos let through.
fn respond(shared: &Shared, request: Request<Incoming>) -> Response<ChaosBody> {
    let path = request.uri().path().to_owned();
    if request.method() == Method::GET {
        if path == "/health" {
            return json_answer(shared, StatusCode::OK, &serde_json::json!({"status": "ok"}));
        }
        if let Some(size) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            let mut response = Response::new(Pattern { left: size }.boxed());
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(size));
            if let Ok(name) = HeaderValue::from_str(&shared.name) {
                response.headers_mut().insert("x-upstream", name);
            }
            return response;
        }
    }
    if matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    ) {
        let content_type = request.headers().get(CONTENT_TYPE).cloned();
        let mut response = Response::new(request.into_body().boxed());
        if let Some(content_type) = content_type {
            response.headers_mut().insert(CONTENT_TYPE, content_type);
        }
        if let Ok(name) = HeaderValue::from_str(&shared.name) {
            response.headers_mut().insert("x-upstream", name);
        }
        return response;
    }
    let mut headers = serde_json::Map::new();
    for name in request.headers().keys() {
        let joined: Vec<&str> = request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        headers.insert(name.as_str().to_owned(), joined.join(", ").into());
    }
    json_answer(
        shared,
        StatusCode::OK,
        &serde_json::json!({
            "server": shared.name,
            "method": request.method().as_str(),
            "path": path,
            "query": request.uri().query(),
            "headers": headers,
        }),
    )
}

async fn chaos_endpoint(shared: &Shared, request: Request<Incoming>) -> Response<ChaosBody> {
    let current = || {
        *shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    let describe = |state: ChaosState| {
        let mut value = serde_json::to_value(state).unwrap_or_default();
        value["requests"] = shared.requests.load(Ordering::SeqCst).into();
        value
    };
    match *request.method() {
        Method::GET => json_answer(shared, StatusCode::OK, &describe(current())),
        Method::POST => {
            let limited = http_body_util::Limited::new(request.into_body(), 64 * 1024);
            let Ok(collected) = limited.collect().await else {
                return json_answer(
                    shared,
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "unreadable body"}),
                );
            };
            let update: serde_json::Value = match serde_json::from_slice(&collected.to_bytes()) {
                Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
                _ => {
                    return json_answer(
                        shared,
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "expected a JSON object"}),
                    )
                }
            };
            match apply(current(), &update) {
                Ok(next) => {
                    *shared
                        .state
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
                    json_answer(shared, StatusCode::OK, &describe(next))
                }
                Err(message) => json_answer(
                    shared,
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": message}),
                ),
            }
        }
        _ => json_answer(
            shared,
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "GET or POST"}),
        ),
    }
}

fn apply(mut state: ChaosState, update: &serde_json::Value) -> Result<ChaosState, String> {
    let Some(fields) = update.as_object() else {
        return Err("expected a JSON object".to_owned());
    };
    for (key, value) in fields {
        match key.as_str() {
            "latency_ms" => {
                state.latency_ms = value
                    .as_u64()
                    .ok_or("latency_ms must be a whole number of milliseconds")?
            }
            "error_rate" => {
                let rate = value.as_f64().ok_or("error_rate must be a number")?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err("error_rate must be between 0 and 1".to_owned());
                }
                state.error_rate = rate;
            }
            "hang" => state.hang = value.as_bool().ok_or("hang must be true or false")?,
            "reset" => state.reset = value.as_bool().ok_or("reset must be true or false")?,
            "requests" => {}
            other => return Err(format!("unknown field `{other}`")),
        }
    }
    Ok(state)
}

/// N bytes of a repeating pattern, in chunks of at most 64 KiB.
struct Pattern {
    left: u64,
}

const CHUNK: usize = 64 * 1024;
static PATTERN: [u8; CHUNK] = {
    let mut bytes = [0u8; CHUNK];
    let mut index = 0;
    while index < CHUNK {
        bytes[index] = b'a' + (index % 26) as u8;
        index += 1;
    }
    bytes
};

impl Body for Pattern {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let size = (self.left as usize).min(CHUNK);
        self.left -= size as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&PATTERN[..size])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_updates_keep_the_other_fields() {
        let start = ChaosState {
            latency_ms: 100,
            error_rate: 0.5,
            hang: false,
            reset: false,
        };
        let next = apply(start, &serde_json::json!({"hang": true})).expect("valid");
        assert_eq!(next.latency_ms, 100);
        assert!(next.hang);
        assert!(apply(start, &serde_json::json!({"error_rate": 2.0})).is_err());
        assert!(apply(start, &serde_json::json!({"latency": 1})).is_err());
    }

    #[tokio::test]
    async fn bytes_come_in_chunks_of_at_most_64_kib() {
        let mut body = Pattern { left: 200_000 };
        assert_eq!(body.size_hint().exact(), Some(200_000));
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("frame").into_data().expect("data");
            sizes.push(data.len());
        }
        assert_eq!(sizes, [65_536, 65_536, 65_536, 3_392]);
        assert!(body.is_end_stream());
    }

    #[test]
    fn requests_is_accepted_and_ignored_in_updates() {
        let start = ChaosState::default();
        let next =
            apply(start, &serde_json::json!({"requests": 12, "reset": true})).expect("valid");
        assert!(next.reset);
        let state: ChaosState =
            serde_json::from_str(r#"{"latency_ms":3,"requests":9}"#).expect("tolerant");
        assert_eq!(state.latency_ms, 3);
    }
}
