//! sekisho-admin: the admin listener, kept apart from traffic.
//!
//! What it is for: `/health`, `/ready`, `/health/detailed` and `/metrics` (open), and the JSON
//! admin API under `/api/` (bearer token), all answered from the gateway's [`Gateway`] handle.
//!
//! What it refuses to do: sit on the data path. A slow scrape or a reload never holds a lock a
//! request needs; a reload runs on a blocking thread and swaps the config atomically.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sekisho_gateway::{Gateway, ReloadError};
use serde_json::json;
use tokio::net::TcpListener;

mod alerts;
mod clock;
mod config_check;
mod dashboard;
mod guard;
mod health;
mod history;
mod notifications;
mod page;
mod respond;
mod users;

pub(crate) use respond::{error, json_response, ok};

pub use alerts::SharedMonitor;

/// The admin listener, bound.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    state: Arc<AdminState>,
}

#[derive(Debug)]
struct AdminState {
    gateway: Gateway,
    token: Option<String>,
    /// The monitor, when the binary runs one (set before serving).
    alerts: std::sync::OnceLock<SharedMonitor>,
    /// The live dashboard's snapshot and viewers.
    dashboard: dashboard::Dashboard,
    /// Failed token attempts per client address.
    guard: guard::TokenGuard,
    /// The notification outbox, when the binary runs one (set before serving).
    outbox: std::sync::OnceLock<sekisho_monitor::Outbox>,
}

type AdminResponse = Response<Full<Bytes>>;

/// An answer whole, or the dashboard's event stream.
type AnyResponse = Response<Either<Full<Bytes>, dashboard::EventStream>>;

impl AdminServer {
    /// Binds `address` (port 0 picks one); `token` guards `/api/*` when set.
    pub async fn bind(
        address: &str,
        gateway: Gateway,
        token: Option<String>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(address).await?,
            state: Arc::new(AdminState {
                gateway,
                token,
                alerts: std::sync::OnceLock::new(),
                dashboard: dashboard::Dashboard::new(),
                guard: guard::TokenGuard::default(),
                outbox: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Serves the alerting endpoints from `monitor` (otherwise they answer 503 `MONITOR_OFF`).
    pub fn with_alerts(self, monitor: SharedMonitor) -> Self {
        let _ = self.state.alerts.set(monitor);
        self
    }

    /// Serves the delivery log (`/api/v1/notifications`) from `outbox` (otherwise 503
    /// `MONITOR_OFF`).
    pub fn with_outbox(self, outbox: sekisho_monitor::Outbox) -> Self {
        let _ = self.state.outbox.set(outbox);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves; the dashboard's sampler runs as long.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let sampler = tokio::spawn(dashboard::run_sampler(Arc::clone(&self.state)));
        // Aborted however serving ends, so the streams see their channel close and end.
        let _sampler = AbortOnDrop(sampler);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let state = Arc::clone(&self.state);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(respond(&state, request, peer.ip()).await) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The token check for `/api/*`, then the event stream, or any other answer through [`route`].
async fn respond(state: &AdminState, request: Request<Incoming>, peer: IpAddr) -> AnyResponse {
    if request.uri().path().starts_with("/api/") {
        if let Some(refused) = guard::check_token(state, &request, peer) {
            return refused.map(Either::Left);
        }
    }
    if request.uri().path() == "/api/v1/stream" && request.method() == Method::GET {
        return match dashboard::stream(state) {
            Ok(stream) => stream.map(Either::Right),
            Err(refused) => (*refused).map(Either::Left),
        };
    }
    route(state, request).await.map(Either::Left)
}

pub(crate) fn unauthenticated() -> AdminResponse {
    error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "the admin API needs `Authorization: Bearer <admin.token>`",
    )
}

async fn route(state: &AdminState, request: Request<Incoming>) -> AdminResponse {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if method == Method::GET {
        if let Some(page) = dashboard::asset(&path) {
            return page;
        }
    }
    if path == "/api/v1/users" {
        return users::users(state, None, request).await;
    }
    if let Some(name) = path.strip_prefix("/api/v1/users/") {
        let name = name.to_owned();
        return users::users(state, Some(&name), request).await;
    }
    if path == "/api/v1/sessions" {
        return users::sessions(state, &request).await;
    }
    if path == "/api/v1/lockouts" {
        return users::lockouts(state, request).await;
    }
    if let Some(name) = path.strip_prefix("/api/v1/circuits/") {
        return match method {
            Method::POST => circuit_action(state, name, request).await,
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "BAD_REQUEST",
                &format!("{method} is not allowed on {path}"),
            ),
        };
    }
    if path == "/api/v1/alerts/history" {
        return history::list(state, &method, request.uri().query()).await;
    }
    if path == "/api/v1/alerts/stats" {
        return history::stats(state, &method).await;
    }
    if let Some(fingerprint) = path
        .strip_prefix("/api/v1/alerts/")
        .and_then(|rest| rest.strip_suffix("/ack"))
    {
        if method == Method::POST {
            let fingerprint = fingerprint.to_owned();
            return history::acknowledge(state, &fingerprint, request).await;
        }
    }
    if let Some(rest) = path.strip_prefix("/api/v1/alerts") {
        if rest.is_empty() || rest.starts_with('/') {
            return alerts::alerts(state, &method, rest, request.uri().query());
        }
    }
    if let Some(name) = path
        .strip_prefix("/api/v1/receivers/")
        .and_then(|rest| rest.strip_suffix("/test"))
    {
        let name = name.to_owned();
        return notifications::test_receiver(state, &method, &name).await;
    }
    if path == "/api/v1/notifications" {
        return notifications::notifications(state, &method, request.uri().query()).await;
    }
    if let Some(rest) = path.strip_prefix("/api/v1/silences") {
        if rest.is_empty() || rest.starts_with('/') {
            let rest = rest.to_owned();
            return alerts::silences(state, &rest, request).await;
        }
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/health") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/ready") => health::ready(state),
        (&Method::GET, "/health/detailed") => health::detailed(state).await,
        (&Method::GET, "/metrics") => metrics(state, &request),
        (&Method::GET, "/api/v1/dashboard") => dashboard::latest(state),
        (&Method::GET, "/api/v1/openapi.json") => {
            let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        (&Method::GET, "/api/v1/status") => health::api_status(state),
        (&Method::GET, "/api/v1/routes") => {
            ok(StatusCode::OK, json!({ "routes": state.gateway.routes() }))
        }
        (&Method::GET, "/api/v1/upstreams") => ok(
            StatusCode::OK,
            json!({ "upstreams": state.gateway.upstreams() }),
        ),
        (&Method::GET, "/api/v1/config") => {
            let status = state.gateway.status();
            ok(
                StatusCode::OK,
                json!({
                    "generation": status.generation,
                    "summary": state.gateway.config().summary(),
                    "file": state.gateway.config_path().map(|p| p.display().to_string()),
                }),
            )
        }
        (&Method::POST, "/api/v1/config/reload") => reload(state).await,
        (&Method::POST, "/api/v1/config/validate") => config_check::validate(state, request).await,
        (&Method::GET, "/api/v1/bulkheads") => config_check::bulkheads(state),
        (&Method::GET, "/api/v1/circuits") => ok(
            StatusCode::OK,
            json!({ "circuits": state.gateway.circuits() }),
        ),
        (&Method::GET, "/api/v1/ratelimits") => rate_limits(state, &request).await,
        (&Method::GET, "/api/v1/cache") => match state.gateway.cache_stats(100) {
            Some((stats, keys)) => ok(StatusCode::OK, json!({ "cache": stats, "keys": keys })),
            None => ok(StatusCode::OK, json!({ "cache": null, "keys": [] })),
        },
        (&Method::POST, "/api/v1/cache/purge") => cache_purge(state, request).await,
        (
            _,
            "/health"
            | "/ready"
            | "/health/detailed"
            | "/metrics"
            | "/api/v1/status"
            | "/api/v1/routes"
            | "/api/v1/upstreams"
            | "/api/v1/config"
            | "/api/v1/config/reload"
            | "/api/v1/config/validate"
            | "/api/v1/bulkheads"
            | "/api/v1/circuits"
            | "/api/v1/ratelimits"
            | "/api/v1/cache"
            | "/api/v1/cache/purge"
            | "/api/v1/dashboard"
            | "/api/v1/openapi.json"
            | "/api/v1/stream"
            | "/"
            | "/dashboard.js"
            | "/dashboard.css",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_REQUEST",
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "NO_ROUTE",
            &format!("no admin endpoint {method} {path}"),
        ),
    }
}

pub(crate) fn authorized(state: &AdminState, request: &Request<Incoming>) -> bool {
    let Some(token) = &state.token else {
        // Allowed by the config only on a loopback admin listener.
        return true;
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(presented.as_bytes(), token.as_bytes())
}

/// Compares without an early exit, so the time taken does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Prometheus text format by default; OpenMetrics to a scraper that asks for it.
fn metrics(state: &AdminState, request: &Request<Incoming>) -> AdminResponse {
    let wants_openmetrics = request
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let (text, content_type) = if wants_openmetrics {
        (
            state.gateway.encode_openmetrics(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            state.gateway.encode_metrics(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    // The monitor's own series (monitoring the monitor), when alerting runs; OpenMetrics ends
    // with `# EOF`, so they go before it.
    let text = match state.alerts.get() {
        Some(monitor) => {
            let own = sekisho_monitor::metrics::encode(
                &monitor.lock().unwrap_or_else(|p| p.into_inner()),
                state.outbox.get(),
                wants_openmetrics,
            );
            match text.strip_suffix("# EOF\n") {
                Some(head) => format!("{head}{own}# EOF\n"),
                None => format!("{text}{own}"),
            }
        }
        None => text,
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The admin API's OpenAPI document, kept in the repo and checked against real answers by
/// `crates/sekisho/tests/openapi.rs`.
const OPENAPI: &str = include_str!("../assets/openapi.json");

/// Largest JSON body the admin API reads.
const MAX_ADMIN_BODY: usize = 16 * 1024;

/// `POST /api/v1/circuits/{name}` with `{"action": "force_open" | "force_closed" | "disable" |
/// "reset"}`.
async fn circuit_action(
    state: &AdminState,
    name: &str,
    request: Request<Incoming>,
) -> AdminResponse {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(request.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the body could not be read (or is over 16 KiB)",
            )
        }
    };
    let action = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("action").and_then(|a| a.as_str()).map(str::to_owned));
    let Some(action) = action else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "expected a JSON body {\"action\": \"force_open\" | \"force_closed\" | \"disable\" | \"reset\"}",
        );
    };
    match state.gateway.circuit_action(name, &action) {
        Ok(view) => ok(StatusCode::OK, json!({ "circuit": view })),
        Err(refused @ sekisho_gateway::CircuitActionError::UnknownCircuit(_)) => {
            error(StatusCode::NOT_FOUND, "NO_ROUTE", &refused.to_string())
        }
        Err(refused) => error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &refused.to_string()),
    }
}

/// `GET /api/v1/ratelimits`: every limit; with `?scope=S&key=K`, what key `K` (its labelled
/// parts joined by `|`: `ip=10.0.0.7`, `h=acme`, `key=…`, `route=orders`) has left under the
/// limit of scope `S` (`*` or a route).
async fn rate_limits(state: &AdminState, request: &Request<Incoming>) -> AdminResponse {
    let query = request.uri().query().unwrap_or("");
    let mut scope = None;
    let mut key = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "scope" => scope = Some(value.into_owned()),
            "key" => key = Some(value.into_owned()),
            _ => {}
        }
    }
    let (Some(scope), Some(key)) = (scope, key) else {
        return ok(
            StatusCode::OK,
            json!({ "rate_limits": state.gateway.rate_limits() }),
        );
    };
    match state.gateway.rate_limit_usage(&scope, &key).await {
        Some(usage) => ok(
            StatusCode::OK,
            json!({
                "scope": scope,
                "key": key,
                "limit": usage.limit,
                "remaining": usage.remaining,
                "reset_seconds": usage.reset.as_secs_f64(),
            }),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            "NO_ROUTE",
            &format!("no rate limit with scope `{scope}`"),
        ),
    }
}

/// `POST /api/v1/cache/purge` with `{"key": "…"}`, `{"prefix": "…"}` or `{"tag": "…"}`.
async fn cache_purge(state: &AdminState, request: Request<Incoming>) -> AdminResponse {
    use http_body_util::BodyExt;
    use sekisho_gateway::cache::Purge;
    let Ok(body) = http_body_util::Limited::new(request.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "the body could not be read (or is over 16 KiB)",
        );
    };
    let value = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
    let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let purge = match (text("key"), text("prefix"), text("tag")) {
        (Some(key), None, None) => Purge::Key(key),
        (None, Some(prefix), None) => Purge::Prefix(prefix),
        (None, None, Some(tag)) => Purge::Tag(tag),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "expected a JSON body with one of {\"key\": …}, {\"prefix\": …}, {\"tag\": …}",
            )
        }
    };
    match state.gateway.cache_purge(&purge).await {
        Ok(deleted) => ok(
            StatusCode::OK,
            json!({ "purge": purge, "shared_deleted": deleted }),
        ),
        Err(why @ sekisho_gateway::PurgeError::NoCache) => {
            error(StatusCode::NOT_FOUND, "NO_ROUTE", &why.to_string())
        }
        Err(why) => error(StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR", &why.to_string()),
    }
}

async fn reload(state: &AdminState) -> AdminResponse {
    let gateway = state.gateway.clone();
    let result = tokio::task::spawn_blocking(move || gateway.reload()).await;
    match result {
        Ok(Ok(summary)) => ok(
            StatusCode::OK,
            json!({
                "status": "ok",
                "generation": summary.generation,
                "summary": summary.summary,
                "needs_restart": summary.needs_restart,
            }),
        ),
        Ok(Err(ReloadError::NoFile)) => error(
            StatusCode::CONFLICT,
            "BAD_REQUEST",
            "the gateway was started without a config file",
        ),
        Ok(Err(refused)) => error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &refused.to_string()),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the reload task failed",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
    }
}
