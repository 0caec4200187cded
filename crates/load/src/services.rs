//! The seeds' demo services, small but real, for `sekisho demo` to put behind the gateway: the
//! **URL shortener** and the **notification service**. They keep their state in memory (a demo
//! restarts clean) and speak plain HTTP/1.1 and h2c like any upstream.
//!
//! **Shortener** ([`Service::Shortener`]):
//! - `POST /api/v1/shorten` `{"url", "ttl_seconds"?}` → 201 `{"key", "path", "url",
//!   "expires_at"}`: a random key of 7 Base62 characters (62⁷ ≈ 3.5 × 10¹², drawn again on a
//!   collision); only `http`/`https` URLs of at most 2,048 bytes; `ttl_seconds` (default 30
//!   days, at most a year) sets when the link expires.
//! - `GET /{key}` → 301 with `Location`, counted as a click, `Cache-Control: public,
//!   max-age=60` so that the gateway can cache the read-heavy redirects (clicks are then counted
//!   only for the reads that reach the service); 404 for an unknown or expired key.
//! - `GET /api/v1/links/{key}` → `{"key", "url", "clicks", "created_at", "expires_at"}`.
//!
//! **Notifications** ([`Service::Notifications`]):
//! - `POST /api/v1/notifications` `{"user", "channel": "email"|"sms"|"push", "message"}` with an
//!   `Idempotency-Key` header (required) → 202 `{"id", "status": "queued"}`, or 200 with the first
//!   answer's id when the key was seen before (nothing is queued twice); `"status":
//!   "suppressed"` (200) when the user opted out of the channel; 429 with `Retry-After` beyond
//!   [`NOTIFICATIONS_PER_MINUTE`] per user (a fixed one-minute window).
//! - Each channel has its own queue and delivery task; a delivery that fails (the
//!   `fail_first` share of first attempts, to show the retries; 0 by default) is tried again
//!   after a backoff until it succeeds: at least once, and the idempotency key makes it at most
//!   once from the caller's side.
//! - `GET /api/v1/notifications/{id}` → `{"id", "user", "channel", "status", "attempts"}` with
//!   `status` `queued` | `delivered` | `suppressed`; `PUT /api/v1/users/{user}/opt-outs`
//!   `{"channels": [...]}` sets the user's opt-outs.
//!
//! Errors are JSON `{"error": "..."}` with 400, 404, 405, 409 or 429.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Notifications one user may send per minute.
pub const NOTIFICATIONS_PER_MINUTE: u32 = 10;
/// The longest request body either service reads.
const MAX_BODY: usize = 16 * 1024;
/// The longest URL the shortener takes.
const MAX_URL: usize = 2048;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHANNELS: [&str; 3] = ["email", "sms", "push"];

/// Which demo service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The URL shortener.
    Shortener,
    /// The notification service.
    Notifications,
}

impl Service {
    /// The service an upstream of this name stands for in the demo, if any.
    pub fn for_upstream(name: &str) -> Option<Self> {
        match name {
            "shortener" => Some(Self::Shortener),
            "notifications" => Some(Self::Notifications),
            _ => None,
        }
    }
}

/// A demo service bound to its address, not yet serving.
#[derive(Debug)]
pub struct ServiceServer {
    listener: TcpListener,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    service: Service,
    links: Mutex<HashMap<String, Link>>,
    notes: Mutex<Notes>,
    queues: HashMap<&'static str, mpsc::UnboundedSender<u64>>,
    fail_first: f64,
}

#[derive(Debug, Clone)]
struct Link {
    url: String,
    created_at: u64,
    expires_at: u64,
    clicks: u64,
}

#[derive(Debug, Default)]
struct Notes {
    next_id: u64,
    by_id: HashMap<u64, Note>,
    by_key: HashMap<String, u64>,
    /// Per user: the minute counted and how many in it.
    sent: HashMap<String, (u64, u32)>,
    opt_outs: HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
struct Note {
    user: String,
    channel: String,
    status: &'static str,
    attempts: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ServiceServer {
    /// Binds `listen` for `service`; `fail_first` is the share (0 to 1) of first delivery
    /// attempts the notification service fails on purpose.
    pub async fn bind(
        service: Service,
        listen: SocketAddr,
        fail_first: f64,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let mut queues = HashMap::new();
        let mut receivers = Vec::new();
        if service == Service::Notifications {
            for channel in CHANNELS {
                let (sender, receiver) = mpsc::unbounded_channel();
                queues.insert(channel, sender);
                receivers.push(receiver);
            }
        }
        let state = Arc::new(State {
            service,
            links: Mutex::new(HashMap::new()),
            notes: Mutex::new(Notes::default()),
            queues,
            fail_first: fail_first.clamp(0.0, 1.0),
        });
        for receiver in receivers {
            tokio::spawn(deliver(Arc::downgrade(&state), receiver));
        }
        Ok(Self { listener, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let state = self.state;
        crate::serve::serve_http(&self.listener, "demo service", shutdown, move |request| {
            let state = Arc::clone(&state);
            async move { answer(&state, request).await }
        })
        .await;
        Ok(())
    }
}

/// The delivery task of one channel: every queued notification is delivered at least once.
async fn deliver(state: std::sync::Weak<State>, mut queue: mpsc::UnboundedReceiver<u64>) {
    while let Some(id) = queue.recv().await {
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(state) = state.upgrade() else {
                return;
            };
            let failed = {
                let mut notes = lock(&state.notes);
                let Some(note) = notes.by_id.get_mut(&id) else {
                    break;
                };
                note.attempts += 1;
                // The demo's sink: a first attempt fails for the chosen share, to show the retry.
                let failed = note.attempts == 1 && fastrand::f64() < state.fail_first;
                if !failed {
                    note.status = "delivered";
                }
                failed
            };
            if !failed {
                break;
            }
            drop(state);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

type Answer = Response<Full<Bytes>>;

fn json_answer(status: StatusCode, value: &Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> Answer {
    json_answer(status, &json!({ "error": message }))
}

/// Bytes of a refused body read and dropped before the answer, at most: the client's bytes are
/// read before the connection closes, so the kernel does not reset it under the answer (which
/// a reset can destroy before the client, or a gateway, reads it).
const MAX_DRAIN: usize = 4 * 1024 * 1024;

async fn body_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, Answer> {
    let mut body = request.into_body();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| error(StatusCode::BAD_REQUEST, "body unreadable"))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                bytes.extend_from_slice(&data);
            } else if seen > MAX_BODY + MAX_DRAIN {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body over 16 KiB"));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}")))
}

async fn answer(state: &State, request: Request<Incoming>) -> Answer {
    let result = match state.service {
        Service::Shortener => shortener(state, request).await,
        Service::Notifications => notifications(state, request).await,
    };
    result.unwrap_or_else(|answer| answer)
}

#[derive(Deserialize)]
struct ShortenRequest {
    url: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn valid_key(key: &str) -> bool {
    key.len() == 7 && key.bytes().all(|b| b.is_ascii_alphanumeric())
}

async fn shortener(state: &State, request: Request<Incoming>) -> Result<Answer, Answer> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if path == "/api/v1/shorten" {
        if method != Method::POST {
            return Err(error(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
        }
        let asked: ShortenRequest = body_json(request).await?;
        let url = asked.url.trim();
        if url.len() > MAX_URL {
            return Err(error(StatusCode::BAD_REQUEST, "url longer than 2048 bytes"));
        }
        let scheme_ok = url
            .parse::<http::Uri>()
            .ok()
            .filter(|uri| uri.host().is_some())
            .and_then(|uri| uri.scheme_str().map(str::to_ascii_lowercase))
            .is_some_and(|scheme| scheme == "http" || scheme == "https");
        if !scheme_ok {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "url must be an absolute http or https URL",
            ));
        }
        let ttl = asked
            .ttl_seconds
            .unwrap_or(30 * 86_400)
            .clamp(1, 365 * 86_400);
        let now = unix_now();
        let link = Link {
            url: url.to_owned(),
            created_at: now,
            expires_at: now + ttl,
            clicks: 0,
        };
        let mut links = lock(&state.links);
        let key = loop {
            let key: String = (0..7)
                .map(|_| char::from(BASE62[fastrand::usize(..BASE62.len())]))
                .collect();
            if !links.contains_key(&key) {
                break key;
            }
        };
        links.insert(key.clone(), link.clone());
        return Ok(json_answer(
            StatusCode::CREATED,
            &json!({ "key": key, "path": format!("/{key}"), "url": link.url, "expires_at": link.expires_at }),
        ));
    }
    if let Some(key) = path.strip_prefix("/api/v1/links/") {
        let links = lock(&state.links);
        let link = links
            .get(key)
            .filter(|link| link.expires_at > unix_now())
            .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such link"))?;
        return Ok(json_answer(
            StatusCode::OK,
            &json!({ "key": key, "url": link.url, "clicks": link.clicks, "created_at": link.created_at, "expires_at": link.expires_at }),
        ));
    }
    let key = path.trim_start_matches('/');
    if method != Method::GET && method != Method::HEAD {
        return Err(error(StatusCode::METHOD_NOT_ALLOWED, "GET only"));
    }
    if !valid_key(key) {
        return Err(error(StatusCode::NOT_FOUND, "no such link"));
    }
    let mut links = lock(&state.links);
    let link = links
        .get_mut(key)
        .filter(|link| link.expires_at > unix_now())
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such link"))?;
    link.clicks += 1;
    let location = HeaderValue::from_str(&link.url)
        .map_err(|_| error(StatusCode::NOT_FOUND, "no such link"))?;
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    response.headers_mut().insert(LOCATION, location);
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct NotificationRequest {
    user: String,
    channel: String,
    message: String,
}

#[derive(Deserialize)]
struct OptOuts {
    channels: Vec<String>,
}

fn note_json(id: u64, note: &Note) -> Value {
    json!({ "id": id, "user": note.user, "channel": note.channel, "status": note.status, "attempts": note.attempts })
}

async fn notifications(state: &State, request: Request<Incoming>) -> Result<Answer, Answer> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if path == "/api/v1/notifications" {
        if method != Method::POST {
            return Err(error(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
        }
        let key = request
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty() && k.len() <= 255)
            .map(str::to_owned)
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "an Idempotency-Key header is required",
                )
            })?;
        let asked: NotificationRequest = body_json(request).await?;
        if asked.user.is_empty() || asked.message.is_empty() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "user and message must not be empty",
            ));
        }
        let Some(queue) = state.queues.get(asked.channel.as_str()) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "channel must be email, sms or push",
            ));
        };
        let mut notes = lock(&state.notes);
        if let Some(&id) = notes.by_key.get(&key) {
            let first = notes.by_id.get(&id).map(|note| note_json(id, note));
            return Ok(json_answer(
                StatusCode::OK,
                &first.unwrap_or(json!({ "id": id })),
            ));
        }
        let opted_out = notes
            .opt_outs
            .get(&asked.user)
            .is_some_and(|channels| channels.contains(&asked.channel));
        if !opted_out {
            let minute = unix_now() / 60;
            let sent = notes.sent.entry(asked.user.clone()).or_insert((minute, 0));
            if sent.0 != minute {
                *sent = (minute, 0);
            }
            if sent.1 >= NOTIFICATIONS_PER_MINUTE {
                let mut refused = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many notifications for this user",
                );
                let wait = 60 - unix_now() % 60;
                refused
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(wait.max(1)));
                return Err(refused);
            }
            sent.1 += 1;
        }
        notes.next_id += 1;
        let id = notes.next_id;
        let note = Note {
            user: asked.user,
            channel: asked.channel,
            status: if opted_out { "suppressed" } else { "queued" },
            attempts: 0,
        };
        let body = note_json(id, &note);
        notes.by_id.insert(id, note);
        notes.by_key.insert(key, id);
        drop(notes);
        if opted_out {
            return Ok(json_answer(StatusCode::OK, &body));
        }
        queue.send(id).map_err(|_| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the channel's queue is closed",
            )
        })?;
        return Ok(json_answer(StatusCode::ACCEPTED, &body));
    }
    if let Some(id) = path.strip_prefix("/api/v1/notifications/") {
        let id: u64 = id
            .parse()
            .map_err(|_| error(StatusCode::NOT_FOUND, "no such notification"))?;
        let notes = lock(&state.notes);
        let note = notes
            .by_id
            .get(&id)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such notification"))?;
        return Ok(json_answer(StatusCode::OK, &note_json(id, note)));
    }
    if let Some(user) = path
        .strip_prefix("/api/v1/users/")
        .and_then(|rest| rest.strip_suffix("/opt-outs"))
    {
        if method != Method::PUT {
            return Err(error(StatusCode::METHOD_NOT_ALLOWED, "PUT only"));
        }
        let user = user.to_owned();
        let asked: OptOuts = body_json(request).await?;
        if let Some(bad) = asked
            .channels
            .iter()
            .find(|c| !CHANNELS.contains(&c.as_str()))
        {
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!("unknown channel `{bad}`"),
            ));
        }
        lock(&state.notes)
            .opt_outs
            .insert(user.clone(), asked.channels.clone());
        return Ok(json_answer(
            StatusCode::OK,
            &json!({ "user": user, "opt_outs": asked.channels }),
        ));
    }
    Err(error(StatusCode::NOT_FOUND, "no such resource"))
}
