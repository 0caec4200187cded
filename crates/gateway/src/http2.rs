//! A client's HTTP/2 connection (ALPN `h2`, or cleartext prior knowledge), served with the `h2`
//! crate directly rather than through hyper's server, for one reason: hyper's server has no way
//! to send an interim (1xx) answer, and a proxy forwards the upstream's (RFC 9110 §15.2; `h2`
//! does, `SendResponse::send_informational`). Each stream runs in a task of its own, as in
//! hyper: the gateway's steps (`proxy::handle`), the upstream's interim answers sent as they
//! come, then the answer's head, its data within the client's flow-control window, and its
//! trailers.
//!
//! What hyper's server did and this keeps: its settings (256 concurrent streams, a 1 MiB
//! window per stream and per connection, the header-list bound), the `date` field, a
//! `content-length` for an answer of known size, connection-specific fields removed from the
//! answer (RFC 9113 §8.2.2), keep-alive pings (every 30 s; no answer within 20 s ends the
//! connection), the drain as a GOAWAY, and the connection's watchdog.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::server::SendResponse;
use h2::{Ping, PingPong, SendStream};
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::ResponseBody;
use crate::client_body::ClientBody;
use crate::clock::http_date;
use crate::connection::{ConnState, Drain, Watchdog};
use crate::interim::InterimSink;
use crate::proxy::{handle, ClientInfo, HeadNotes};
use crate::state::GatewayState;

/// Streams a client may open at once.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// The receive window per stream and per connection (hyper's server default).
const WINDOW: u32 = 1024 * 1024;
/// Answer bytes buffered per stream beyond the client's window (hyper's default).
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// How often an idle-looking connection is pinged, and how long the pong may take.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// What one connection's streams share.
struct Streams {
    shared: Arc<GatewayState>,
    state: Arc<ConnState>,
    client: Arc<ClientInfo>,
}

/// Serves the HTTP/2 connection on `io` until it ends, its watchdog fires or it drains.
pub(crate) async fn serve<I>(
    shared: Arc<GatewayState>,
    io: I,
    state: Arc<ConnState>,
    client: Arc<ClientInfo>,
    header_list_limit: usize,
    mut watchdog: Watchdog,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = client.remote;
    let streams = Arc::new(Streams {
        shared,
        state,
        client,
    });
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(u32::try_from(header_list_limit).unwrap_or(u32::MAX));
    let handshake = builder.handshake::<_, Bytes>(io);
    tokio::pin!(handshake);
    let connection = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = handshake.as_mut().poll(cx) {
            return Poll::Ready(result.ok());
        }
        watchdog.poll_if_woken(cx).map(|()| None)
    })
    .await;
    let Some(mut connection) = connection else {
        tracing::debug!(%remote, "HTTP/2 handshake failed or timed out");
        return;
    };
    let mut pings = connection.ping_pong().map(Pinger::new);
    let (mut drain_signal, mut _draining) = match drain {
        Drain::Waiting(signal) => (Some(signal), None),
        Drain::Told(receiver) => {
            connection.graceful_shutdown();
            (None, Some(receiver))
        }
    };
    let ended = std::future::poll_fn(|cx| {
        if let Some(signal) = drain_signal.as_mut() {
            if let Poll::Ready(receiver) = signal.poll_if_woken(cx) {
                drain_signal = None;
                _draining = Some(receiver);
                connection.graceful_shutdown();
            }
        }
        loop {
            match connection.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    tokio::spawn(crate::clock::one_clock_per_poll(serve_stream(
                        Arc::clone(&streams),
                        request,
                        respond,
                    )));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(error)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        if let Some(pinger) = pings.as_mut() {
            if pinger.poll_dead(cx) {
                tracing::debug!(%remote, "HTTP/2 keep-alive ping unanswered");
                return Poll::Ready(None);
            }
        }
        watchdog.poll_if_woken(cx).map(|()| None)
    })
    .await;
    if let Some(error) = ended {
        tracing::debug!(%error, %remote, "HTTP/2 connection ended with an error");
    }
}

/// Keep-alive pings: one every [`PING_INTERVAL`]; a pong later than [`PING_TIMEOUT`] means
/// the peer is gone.
struct Pinger {
    ping_pong: PingPong,
    timer: Pin<Box<tokio::time::Sleep>>,
    waiting: bool,
}

impl Pinger {
    fn new(ping_pong: PingPong) -> Self {
        Self {
            ping_pong,
            timer: Box::pin(tokio::time::sleep(PING_INTERVAL)),
            waiting: false,
        }
    }

    /// True once a ping went unanswered.
    fn poll_dead(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.waiting {
                match self.ping_pong.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        let next = tokio::time::Instant::now() + PING_INTERVAL;
                        self.timer.as_mut().reset(next);
                    }
                    Poll::Ready(Err(_)) => return true,
                    Poll::Pending => {}
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.waiting {
                return true;
            }
            if self.ping_pong.send_ping(Ping::opaque()).is_err() {
                return true;
            }
            self.waiting = true;
            let deadline = tokio::time::Instant::now() + PING_TIMEOUT;
            self.timer.as_mut().reset(deadline);
        }
    }
}

/// One stream: the gateway's answer, the upstream's interim answers first.
async fn serve_stream(
    streams: Arc<Streams>,
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let Streams {
        shared,
        state,
        client,
    } = &*streams;
    let (mut parts, stream) = request.into_parts();
    let length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| sekisho_h1::content_length(value.as_bytes()));
    let is_head = parts.method == Method::HEAD;
    let body = ClientBody::h2(stream, length);
    // The stream's own sink: the connection's streams run side by side.
    let sink = InterimSink::default();
    let mut info = ClientInfo::clone(client);
    info.interim = Some(sink.clone());
    let guard = state.request_started();
    let mut answer = std::pin::pin!(handle(
        shared,
        Arc::new(info),
        &mut parts,
        body,
        HeadNotes::default()
    ));
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = answer.as_mut().poll(cx) {
            for interim in sink.take() {
                send_interim(&mut respond, interim);
            }
            return Poll::Ready(Some(response));
        }
        while let Poll::Ready(answers) = sink.poll_take(cx) {
            for interim in answers {
                send_interim(&mut respond, interim);
            }
        }
        // The client reset the stream: the exchange is abandoned.
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(mut response) = response else {
        return;
    };
    response.body_mut().hold(guard.into_held());
    crate::body::materialize(&mut response);
    send_response(respond, response, is_head).await;
}

fn send_interim(respond: &mut SendResponse<Bytes>, interim: crate::interim::Interim) {
    let mut head = Response::new(());
    *head.status_mut() = interim.status;
    *head.headers_mut() = interim.headers;
    strip_connection_fields(head.headers_mut());
    if let Err(error) = respond.send_informational(head) {
        tracing::debug!(%error, "an interim answer could not be sent");
    }
}

/// Sends the answer: its head, then its data as the client's window allows, then trailers.
async fn send_response(
    mut respond: SendResponse<Bytes>,
    response: Response<ResponseBody>,
    is_head: bool,
) {
    let (mut parts, mut body) = response.into_parts();
    strip_connection_fields(&mut parts.headers);
    if !parts.headers.contains_key(DATE) {
        parts.headers.insert(
            DATE,
            HeaderValue::from_bytes(&http_date()).unwrap_or(HeaderValue::from_static("")),
        );
    }
    let known = body.size_hint().exact();
    // Never on a 204 or 304 (RFC 9110 §8.6), nor on an answer to HEAD (its own field stays).
    let bodiless = parts.status == http::StatusCode::NO_CONTENT
        || parts.status == http::StatusCode::NOT_MODIFIED;
    if let Some(length) = known {
        if !parts.headers.contains_key(CONTENT_LENGTH) && !is_head && !bodiless {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    let end = is_head || bodiless || body.is_end_stream();
    let mut stream = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%error, "an HTTP/2 answer's head could not be sent");
            return;
        }
    };
    if end {
        return;
    }
    if let Err(error) = send_body(&mut stream, &mut body).await {
        tracing::debug!(%error, "an HTTP/2 answer's body was cut");
        stream.send_reset(h2::Reason::INTERNAL_ERROR);
    }
}

/// Why an answer's body stopped short.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the client reset the stream ({0:?})")]
    Reset(h2::Reason),
    #[error("{0}")]
    H2(#[from] h2::Error),
    #[error("the answer's body failed: {0}")]
    Source(String),
}

async fn send_body(
    stream: &mut SendStream<Bytes>,
    body: &mut ResponseBody,
) -> Result<(), BodyError> {
    loop {
        let frame = std::future::poll_fn(|cx| {
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return Poll::Ready(Err(match reset {
                    Ok(reason) => BodyError::Reset(reason),
                    Err(error) => BodyError::H2(error),
                }));
            }
            Pin::new(&mut *body).poll_frame(cx).map(Ok)
        })
        .await?;
        let Some(frame) = frame else {
            stream.send_data(Bytes::new(), true)?;
            return Ok(());
        };
        let frame = frame.map_err(|error| BodyError::Source(error.to_string()))?;
        match frame.into_data() {
            Ok(mut data) => {
                // The last piece carries the end of the stream (no empty frame after it).
                let last = body.is_end_stream();
                while data.has_remaining() {
                    stream.reserve_capacity(data.len());
                    let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await;
                    let granted = match granted {
                        Some(granted) => granted?,
                        None => return Err(BodyError::Reset(h2::Reason::CANCEL)),
                    };
                    let piece = data.split_to(granted.min(data.len()));
                    stream.send_data(piece, last && data.is_empty())?;
                }
                if last {
                    return Ok(());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(trailers)?;
                    return Ok(());
                }
            }
        }
    }
}

/// Removes the fields HTTP/2 forbids in a message (RFC 9113 §8.2.2): `h2` refuses to send a
/// head that holds one, and an upstream's HTTP/1.1 answer may.
fn strip_connection_fields(headers: &mut HeaderMap) {
    static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    // One pass first: an answer rarely holds any (five look-ups by name cost more).
    let any = headers.keys().any(|name| {
        [&CONNECTION, &TRANSFER_ENCODING, &UPGRADE, &TE].contains(&name)
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
    });
    if !any {
        return;
    }
    for name in [
        &CONNECTION,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ] {
        headers.remove(name);
    }
    if headers
        .get(TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_fields_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "close"),
            ("te", "gzip"),
            ("x-kept", "1"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_connection_fields(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
        let mut trailers_only = HeaderMap::new();
        trailers_only.insert(TE, HeaderValue::from_static("trailers"));
        strip_connection_fields(&mut trailers_only);
        assert_eq!(trailers_only.len(), 1);
    }
}
