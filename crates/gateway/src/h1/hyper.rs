//! A connection served by hyper: HTTP/2 (prior knowledge or ALPN), and every HTTP/1 exchange the
//! owned path leaves to it (bodies, upgrades, HTTP/1.0, unusual heads), from that request on.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use crate::body::ClientBody;
use crate::connection::{ConnState, Drain, Watchdog};
use crate::proxy::{handle, ClientInfo, HeadNotes};
use crate::runtime::ListenerSettings;
use crate::state::GatewayState;

fn builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's limit is a hard backstop above ours: the gateway itself answers 431 with JSON for
    // heads between `max_header_bytes` and this.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(hard_limit(settings).max(8192));
    // Beyond the count hyper refuses the head (431, which `ConnIo` turns into the contract's
    // JSON). Its own default is left alone when asked for: any explicit count makes hyper build
    // its two header arrays element by element on every request (on the heap above 100),
    // ≈ 3,000 instructions and two allocations at 256 (benchmarks.md, session 8).
    if settings.max_header_count != sekisho_config::DEFAULT_MAX_HEADER_COUNT {
        builder
            .http1()
            .max_headers(settings.max_header_count as usize);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(hard_limit(settings) as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// The longest head read before hyper refuses it (431).
pub(crate) fn hard_limit(settings: &ListenerSettings) -> usize {
    (settings.max_header_bytes as usize)
        .saturating_mul(2)
        .max(16 * 1024)
}

/// Serves the connection's requests with hyper until it ends, is closed by its watchdog, or
/// drains.
pub(crate) async fn drive<I>(
    shared: Arc<GatewayState>,
    io: I,
    state: Arc<ConnState>,
    client: Arc<ClientInfo>,
    settings: &ListenerSettings,
    mut watchdog: Watchdog,
    drain: Drain,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remote = client.remote;
    let service_state = Arc::clone(&state);
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let shared = Arc::clone(&shared);
        let client = Arc::clone(&client);
        let guard = service_state.request_started();
        let ambiguous_length = guard.ambiguous_length();
        // Not boxed: hyper's HTTP/1 dispatcher keeps the request future in a box of its own,
        // made once per connection (a box here cost an allocation per request).
        async move {
            let (mut parts, body) = request.into_parts();
            let notes = HeadNotes {
                ambiguous_length,
                ..HeadNotes::default()
            };
            let mut response =
                handle(&shared, client, &mut parts, ClientBody::hyper(body), notes).await;
            crate::body::materialize(&mut response);
            response.body_mut().hold(guard.into_held());
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = builder(settings)
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(connection);
    let (mut drain_signal, mut _draining) = match drain {
        Drain::Waiting(signal) => (Some(signal), None),
        Drain::Told(receiver) => {
            connection.as_mut().graceful_shutdown();
            (None, Some(receiver))
        }
    };
    let ended = std::future::poll_fn(|cx| {
        if let Some(signal) = drain_signal.as_mut() {
            if let Poll::Ready(watcher) = signal.poll_if_woken(cx) {
                drain_signal = None;
                _draining = Some(watcher);
                connection.as_mut().graceful_shutdown();
            }
        }
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        watchdog.poll_if_woken(cx).map(|()| None)
    })
    .await;
    match ended {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            tracing::debug!(%error, %remote, "connection ended with an error");
        }
        None => {
            tracing::debug!(%remote, "connection closed by the idle or header-read deadline");
        }
    }
}
