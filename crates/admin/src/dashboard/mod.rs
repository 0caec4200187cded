//! The live dashboard: the page at `GET /` (HTML, script and style embedded in the binary: no
//! CDN, works offline), and `GET /api/v1/stream`, the server-sent events that keep it live.
//!
//! One task takes a snapshot every second ([`snapshot::Sampler`]) and publishes it through a
//! `watch` channel; each viewer's stream only forwards the latest one, so a viewer costs a
//! channel and a small task, never a read of the gateway. A slow viewer skips snapshots instead
//! of queueing them. Viewers are capped ([`MAX_VIEWERS`]).

mod exposition;
mod reloads;
pub(crate) mod snapshot;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::{error, AdminResponse, AdminState};

/// Open streams at most; one more is refused with 503, so viewers cannot exhaust the admin side.
pub(crate) const MAX_VIEWERS: usize = 64;

/// What the dashboard shares between the sampler and the viewers.
pub(crate) struct Dashboard {
    pub(crate) published: snapshot::Published,
    viewers: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("viewers", &self.viewers())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    pub(crate) fn new() -> Self {
        Self {
            published: snapshot::Published::new(),
            viewers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Streams open now.
    pub(crate) fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }

    /// The latest snapshot's JSON, before the first one `None`.
    fn latest_json(&self) -> Option<String> {
        let frame = self.published.latest.borrow().clone();
        std::str::from_utf8(&frame)
            .ok()
            .and_then(|text| text.strip_prefix("event: snapshot\ndata: "))
            .map(|data| data.trim_end().to_owned())
    }

    /// The latest snapshot, parsed; before the first one `None`.
    pub(crate) fn latest_value(&self) -> Option<serde_json::Value> {
        self.latest_json()
            .and_then(|json| serde_json::from_str(&json).ok())
    }
}

/// Takes a snapshot every [`snapshot::PERIOD`] until aborted.
pub(crate) async fn run_sampler(state: Arc<AdminState>) {
    let mut sampler = snapshot::Sampler::new();
    let mut ticks = tokio::time::interval(snapshot::PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        sampler.tick(&state);
    }
}

/// The body of one viewer's stream: the frames its forwarding task hands over.
pub(crate) struct EventStream {
    frames: mpsc::Receiver<Bytes>,
    _viewer: Viewer,
}

/// Counts a viewer while its stream lives.
struct Viewer(Arc<AtomicUsize>);

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.frames
            .poll_recv(cx)
            .map(|frame| frame.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// `GET /api/v1/stream`: `retry` advice, the `history` event, the latest `snapshot`, then each
/// new one as it is taken. Ends when the client goes away or the admin listener stops.
pub(crate) fn stream(state: &AdminState) -> Result<Response<EventStream>, Box<AdminResponse>> {
    let dashboard = &state.dashboard;
    let count = dashboard.viewers.fetch_add(1, Ordering::Relaxed);
    let viewer = Viewer(Arc::clone(&dashboard.viewers));
    if count >= MAX_VIEWERS {
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            &format!("at most {MAX_VIEWERS} dashboard streams may be open at once"),
        )));
    }
    // Two frames of room: a viewer that does not read keeps at most these, and the forwarder
    // skips to the latest snapshot when it can send again.
    let (sender, frames) = mpsc::channel::<Bytes>(2);
    let mut latest = dashboard.published.latest.clone();
    let history = dashboard.published.history_event();
    tokio::spawn(async move {
        let hello = Bytes::from_static(b"retry: 1000\n\n");
        if sender.send(hello).await.is_err() || sender.send(history).await.is_err() {
            return;
        }
        loop {
            let frame = latest.borrow_and_update().clone();
            if !frame.is_empty() && sender.send(frame).await.is_err() {
                return;
            }
            tokio::select! {
                changed = latest.changed() => if changed.is_err() { return },
                () = sender.closed() => return,
            }
        }
    });
    let mut response = Response::new(EventStream {
        frames,
        _viewer: viewer,
    });
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");

/// The page's own files: `/`, `/dashboard.js`, `/dashboard.css`.
pub(crate) fn asset(path: &str) -> Option<AdminResponse> {
    let (body, content_type) = match path {
        "/" | "/dashboard" => (PAGE, "text/html; charset=utf-8"),
        "/dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Only this origin's script, style and API; no framing (clickjacking of the action buttons).
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(response)
}

/// `GET /api/v1/dashboard`: `{"status":"ok","snapshot":…}` with the latest snapshot (what the
/// stream's `snapshot` events carry), for a client that does not stream.
pub(crate) fn latest(state: &AdminState) -> AdminResponse {
    match state.dashboard.latest_json() {
        Some(json) => {
            // The API's envelope around the snapshot, which is JSON already.
            let mut body = Vec::with_capacity(json.len() + 32);
            body.extend_from_slice(br#"{"status":"ok","snapshot":"#);
            body.extend_from_slice(json.as_ref());
            body.push(b'}');
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            "the first snapshot has not been taken yet",
        ),
    }
}
