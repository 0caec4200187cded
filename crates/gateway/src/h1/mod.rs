//! A client connection's HTTP/1.1 exchanges, served by a codec of the gateway's own for the
//! common case and by hyper for everything else (decision 0019). The head is read by
//! `sekisho-h1` (which takes only the common case; see there).
//!
//! The owned path reads request heads with `httparse` into a buffer of its own, runs the
//! gateway's steps on them (`proxy::handle`, the same as for hyper's requests), and writes the
//! answer itself: interim (1xx) answers of the upstream first (hyper's server cannot send them),
//! then the head and the body, a small body in the same write. It holds no buffer while the
//! connection is idle. The first request it does not take and everything after it
//! on the connection go to hyper, with the bytes already read put back in front
//! (`Prefixed`): hyper then sees the connection exactly as it would have, so every refusal, limit
//! and smuggling defence is unchanged. HTTP/2 connections go to hyper from the start.
//!
//! The connection's clocks are the same for both: `connection::watchdog` (idle and
//! header-read deadlines) and the drain signal, polled only when they woke.

mod fed;
mod hyper;
mod prefixed;
mod write;

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::body::ClientBody;
use crate::connection::{watchdog, ConnIo, ConnState, Drain, Watchdog};
use crate::http2;
use crate::interim::{Interim, InterimSink};
use crate::proxy::{handle, refuse_early, ClientInfo, EarlyRefusal, HeadNotes, HeadView};
use crate::request_id::X_REQUEST_ID;
use crate::runtime::ListenerSettings;
use crate::state::GatewayState;
use crate::woken::WokenOnly;

use self::fed::{feed_rest, Absorbed, Fed};
use self::hyper::{drive, hard_limit};
use self::prefixed::Prefixed;
use self::write::{Writer, Written};
use sekisho_h1::Parsed;

/// Bytes taken from the socket per read.
const READ_CHUNK: usize = 4096;

/// The longest request body the owned path reads whole before the steps run; a longer one is
/// fed to them as it arrives (`BodyFeeder`).
const MAX_OWNED_BODY: usize = 64 * 1024;

/// A client connection, ready to serve.
pub(crate) struct Conn<I> {
    pub shared: Arc<GatewayState>,
    pub io: ConnIo<I>,
    pub state: Arc<ConnState>,
    pub client: Arc<ClientInfo>,
    pub settings: ListenerSettings,
    pub watcher: watch::Receiver<()>,
}

/// How a connection is served from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// HTTP/2 by ALPN: `http2` from the start.
    Http2,
    /// The owned HTTP/1.1 path; a connection that opens with HTTP/2's preface (prior knowledge)
    /// goes to `http2`, any other exchange it does not take to hyper.
    Owned,
    /// hyper from the start (the owned path turned off).
    Hyper,
}

/// HTTP/2's connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `conn` until it ends, as `start` says.
pub(crate) async fn serve<I>(conn: Conn<I>, start: Start)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        shared,
        io,
        state,
        client,
        settings,
        watcher,
    } = conn;
    let watchdog: Watchdog = WokenOnly::new(Box::pin(watchdog(
        Arc::clone(&state),
        settings.idle_timeout,
        settings.header_read_timeout,
    )));
    let drain = Drain::Waiting(WokenOnly::new(Box::pin(async move {
        let mut watcher = watcher;
        let _ = watcher.changed().await;
        watcher
    })));
    let mut owned_conn = Owned {
        io,
        buf: BytesMut::new(),
        watchdog,
        drain,
    };
    if start == Start::Owned {
        match owned_conn
            .exchanges(&shared, &state, &client, &settings)
            .await
        {
            Ended::Closed => return,
            Ended::HandOff => {}
        }
    }
    let Owned {
        io,
        buf,
        watchdog,
        drain,
    } = owned_conn;
    let limit = hard_limit(&settings);
    if start == Start::Http2 {
        Box::pin(http2::serve(
            shared, io, state, client, limit, watchdog, drain,
        ))
        .await;
        return;
    }
    let prior_knowledge = start == Start::Owned && buf.starts_with(H2_PREFACE);
    let io = Prefixed::new(buf.freeze(), io);
    if prior_knowledge {
        Box::pin(http2::serve(
            shared, io, state, client, limit, watchdog, drain,
        ))
        .await;
        return;
    }
    // Boxed for the same reason: hyper's connection state exists only once it is needed.
    Box::pin(drive(shared, io, state, client, &settings, watchdog, drain)).await;
}

/// The owned path's hold on a connection.
struct Owned<I> {
    io: ConnIo<I>,
    /// Bytes read and not yet used (empty, with no memory, while the connection is idle).
    buf: BytesMut,
    watchdog: Watchdog,
    drain: Drain,
}

/// How the owned path let go of a connection.
enum Ended {
    /// It is over (or must be dropped).
    Closed,
    /// hyper takes it from the start of `buf`.
    HandOff,
}

/// What one exchange needs of its connection.
struct Exchange<'a> {
    shared: &'a Arc<GatewayState>,
    state: &'a Arc<ConnState>,
    client: &'a Arc<ClientInfo>,
    sink: &'a InterimSink,
    keep_alive: bool,
    is_head: bool,
    limit: usize,
    notes: HeadNotes,
}

/// What came while waiting for the client.
enum Came {
    Bytes,
    /// End of input, a read error, or the watchdog's deadline.
    Closed,
    /// The gateway is draining.
    Drain,
}

/// What came while the gateway worked on a request.
enum Step<T> {
    /// The final answer, and interim answers that came with it.
    Answer(T, Vec<Interim>),
    Interim(Vec<Interim>),
    /// The steps want the body of a client waiting for `100 Continue`.
    Continue,
    /// The client went away: the exchange is abandoned (hyper's default too).
    Gone,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Owned<I> {
    async fn exchanges(
        &mut self,
        shared: &Arc<GatewayState>,
        state: &Arc<ConnState>,
        client: &Arc<ClientInfo>,
        settings: &ListenerSettings,
    ) -> Ended {
        let sink = client.interim.clone().unwrap_or_default();
        let mut fields = Vec::new();
        let mut writer = Writer::default();
        let limit = hard_limit(settings);
        let max_fields = settings.max_header_count as usize;
        loop {
            let head = loop {
                if !self.buf.is_empty() {
                    match sekisho_h1::parse(&self.buf, max_fields, &mut fields) {
                        Parsed::Head(head) => break head,
                        Parsed::HandOff => return Ended::HandOff,
                        Parsed::Partial if self.buf.len() >= limit => return Ended::HandOff,
                        Parsed::Partial => {}
                    }
                }
                match std::future::poll_fn(|cx| self.poll_wait(cx, limit)).await {
                    Came::Bytes => {}
                    Came::Closed => return Ended::Closed,
                    // Idle: the connection ends now; a head begun is still served.
                    Came::Drain if self.buf.is_empty() => return Ended::Closed,
                    Came::Drain => {}
                }
            };
            let keep_alive = head.keep_alive;
            let is_head = head.is_head;
            // A small body is read whole before the steps run (as nginx buffers request
            // bodies), within the head's own deadline; a larger one is fed to the steps as it
            // arrives, while the upstream's interim answers go out.
            // A client that expects `100 Continue` sends its body only once told: fed, so that
            // the answer goes out when the steps first want the body (hyper's moment too).
            let expects_body = head.chunked || head.body_length > 0;
            let whole = match usize::try_from(head.body_length) {
                Ok(length)
                    if length <= MAX_OWNED_BODY
                        && !head.chunked
                        && !(head.expect_continue && expects_body) =>
                {
                    Some(length)
                }
                _ => None,
            };
            if let Some(length) = whole {
                while self.buf.len() < head.len + length {
                    match std::future::poll_fn(|cx| self.poll_wait(cx, head.len + length)).await {
                        Came::Bytes | Came::Drain => {}
                        Came::Closed => return Ended::Closed,
                    }
                }
            }
            // A refusal that needs no more than the head is written before any request is
            // built (issue 14: rejections must be cheap when they come in floods).
            let early = whole.and_then(|length| {
                let view = || HeadView {
                    method: head.method(),
                    path: head.path(&self.buf),
                    host: head.host(&self.buf, &fields),
                    fields: &fields,
                    bytes: &self.buf,
                    head_len: head.len,
                    body_length: head.body_length,
                };
                refuse_early(shared, view).map(|early| (early, length))
            });
            // Boxed, either way: the connection's own future (its task, kept while it is idle)
            // stays small; an exchange's state exists only while it is served.
            let served: Pin<Box<dyn Future<Output = bool> + Send + '_>> =
                if let Some((early, length)) = early {
                    self.buf.advance(head.len + length);
                    let keep_alive = keep_alive && matches!(self.drain, Drain::Waiting(_));
                    crate::boxed::boxed(|| {
                        self.refuse(early, state, &mut writer, is_head, keep_alive)
                    })
                } else {
                    let head_bytes = self.buf.split_to(head.len).freeze();
                    let (body, body_bytes, fed) = match whole {
                        Some(length) => {
                            let bytes = self.buf.split_to(length).freeze();
                            (ClientBody::full(bytes.clone()), bytes, None)
                        }
                        None => {
                            let (fed, body) = Fed::new(&head);
                            (body, bytes::Bytes::new(), Some(fed))
                        }
                    };
                    let notes = HeadNotes {
                        ambiguous_length: false,
                        owned_len: Some(head.len),
                        body_length: Some(head.body_length),
                        without_request_id: sekisho_h1::field(&head_bytes, &fields, &X_REQUEST_ID)
                            .is_none(),
                    };
                    let Some(request) = head.request(&head_bytes, &mut fields, body) else {
                        // `http` refused a part httparse took: hyper reads the head again and decides.
                        let mut again = BytesMut::from(&head_bytes[..]);
                        again.extend_from_slice(&body_bytes);
                        again.extend_from_slice(&self.buf);
                        self.buf = again;
                        return Ended::HandOff;
                    };
                    let exchange = Exchange {
                        shared,
                        state,
                        client,
                        sink: &sink,
                        keep_alive,
                        is_head,
                        limit,
                        notes,
                    };
                    crate::boxed::boxed(|| self.exchange(exchange, request, fed, &mut writer))
                };
            if !served.await {
                return Ended::Closed;
            }
            sink.clear();
            if self.buf.is_empty() {
                // Nothing pipelined: an idle connection keeps no buffer.
                self.buf = BytesMut::new();
                writer.release();
            }
        }
    }

    /// Serves one request: the gateway's answer (and the upstream's interim answers) written
    /// out. True when the connection may carry another exchange.
    async fn exchange(
        &mut self,
        exchange: Exchange<'_>,
        request: http::Request<ClientBody>,
        mut fed: Option<Fed>,
        writer: &mut Writer,
    ) -> bool {
        let Exchange {
            shared,
            state,
            client,
            sink,
            keep_alive,
            is_head,
            limit,
            notes,
        } = exchange;
        let guard = state.request_started();
        // The body once every byte of it was fed (kept to know whether it was read).
        let mut done: Option<Fed> = None;
        let answered = {
            // The head is lent to the steps (not moved down through each of their futures),
            // and their future pinned where it is made: each move is a copy into lines the
            // request had not touched yet.
            let (mut parts, body) = request.into_parts();
            let mut answer =
                std::pin::pin!(handle(shared, Arc::clone(client), &mut parts, body, notes));
            loop {
                let step = std::future::poll_fn(|cx| {
                    if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                        // Interim answers that came in the same turn go out first.
                        return Poll::Ready(Step::Answer(response, sink.take()));
                    }
                    if let Poll::Ready(answers) = sink.poll_take(cx) {
                        return Poll::Ready(Step::Interim(answers));
                    }
                    // The body's bytes are fed as they come; pipelined bytes after it are
                    // kept for later; the drain is noted.
                    loop {
                        if let Some(body) = fed.as_mut() {
                            if body.continue_due && !self.buf.is_empty() {
                                // The client sent its body without waiting.
                                body.continue_due = false;
                            }
                            if body.continue_due && body.poll_wanted(cx).is_ready() {
                                body.continue_due = false;
                                return Poll::Ready(Step::Continue);
                            }
                            match body.poll_absorb(cx, &mut self.buf) {
                                // Back-pressure: nothing more is read until there is room.
                                Poll::Pending => return Poll::Pending,
                                Poll::Ready(Absorbed::Done) => done = fed.take(),
                                Poll::Ready(Absorbed::NeedMore | Absorbed::Broken) => {}
                            }
                        }
                        match self.poll_wait(cx, limit) {
                            Poll::Ready(Came::Closed) => return Poll::Ready(Step::Gone),
                            Poll::Ready(Came::Bytes | Came::Drain) => {}
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                })
                .await;
                match step {
                    Step::Answer(response, answers) => {
                        if !answers.is_empty()
                            && writer.interim(&mut self.io, &answers).await.is_err()
                        {
                            break None;
                        }
                        break Some(response);
                    }
                    Step::Gone => break None,
                    Step::Interim(answers) => {
                        if writer.interim(&mut self.io, &answers).await.is_err() {
                            break None;
                        }
                    }
                    Step::Continue => {
                        let go_on = [Interim {
                            status: http::StatusCode::CONTINUE,
                            headers: http::HeaderMap::new(),
                        }];
                        if writer.interim(&mut self.io, &go_on).await.is_err() {
                            break None;
                        }
                    }
                }
            }
        };
        let Some(mut response) = answered else {
            return false;
        };
        response.body_mut().hold(guard.into_held());
        // An answer that came before the whole body (an upstream that streams its answer as
        // it reads, or one that refused the body) ends the connection after it: what is left
        // of the body is not read as a next request.
        let abandoned = done.as_ref().is_some_and(Fed::abandoned);
        let keep_alive =
            keep_alive && fed.is_none() && !abandoned && matches!(self.drain, Drain::Waiting(_));
        let written = match fed {
            None => {
                writer
                    .response(&mut self.io, &mut response, is_head, keep_alive)
                    .await
            }
            Some(fed) => {
                // Both ways at once: the rest of the body is read and fed while the answer is
                // written (the upstream may read no further until its answer moves).
                let buffered = std::mem::take(&mut self.buf);
                let (reading, mut writing) = tokio::io::split(&mut self.io);
                let feeding = feed_rest(reading, fed, buffered);
                let answer = writer.response(&mut writing, &mut response, is_head, false);
                tokio::pin!(feeding, answer);
                let mut fed_all = false;
                std::future::poll_fn(|cx| {
                    if !fed_all {
                        fed_all = feeding.as_mut().poll(cx).is_ready();
                    }
                    answer.as_mut().poll(cx)
                })
                .await
            }
        };
        // What the writing left of the answer (what its body held) goes before the next one.
        drop(response);
        self.written(written).await
    }

    /// Writes a refusal decided from the head: true when the connection may carry another
    /// exchange.
    async fn refuse(
        &mut self,
        early: EarlyRefusal,
        state: &Arc<ConnState>,
        writer: &mut Writer,
        is_head: bool,
        keep_alive: bool,
    ) -> bool {
        let _guard = state.request_started();
        let written = writer
            .refusal(&mut self.io, &early, is_head, keep_alive)
            .await;
        self.written(written).await
    }

    /// After an answer was written: true when the connection may carry another exchange;
    /// otherwise it is closed.
    async fn written(&mut self, written: std::io::Result<Written>) -> bool {
        match written {
            Ok(Written::Done { keep_alive: true }) => true,
            Ok(Written::Done { keep_alive: false }) => {
                // A lingering close (`ConnIo`): what the client still sends is read and
                // dropped for a while, so that our answer is not destroyed by a reset.
                let _ = self.io.shutdown().await;
                false
            }
            Ok(Written::Broken) | Err(_) => false,
        }
    }

    /// Reads what the client sent (at most up to `limit` bytes kept), or notes the watchdog's
    /// deadline or the drain.
    fn poll_wait(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Came> {
        if let Drain::Waiting(signal) = &mut self.drain {
            if let Poll::Ready(receiver) = signal.poll_if_woken(cx) {
                self.drain = Drain::Told(receiver);
                return Poll::Ready(Came::Drain);
            }
        }
        if self.watchdog.poll_if_woken(cx).is_ready() {
            return Poll::Ready(Came::Closed);
        }
        if self.buf.len() >= limit {
            return Poll::Pending;
        }
        // Read into the stack, then copy: the buffer is allocated only when bytes came.
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut scratch);
        match Pin::new(&mut self.io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Came::Closed),
            Poll::Ready(Ok(())) => {
                self.buf.extend_from_slice(read.filled());
                Poll::Ready(Came::Bytes)
            }
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "client connection read failed");
                Poll::Ready(Came::Closed)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::tests::future_size;

    /// An idle connection's task holds the connection's future whole: the exchange (the
    /// gateway's request future, the answer being written) and a TLS handshake are boxed where
    /// awaited, so that it stays small (issue 20: ≤ 4 KiB per idle keep-alive connection; the
    /// task was ≈ 9 KB in a debug build when it held them).
    #[test]
    fn an_idle_connections_future_is_small() {
        type ConnectionArgs = (
            Arc<GatewayState>,
            tokio::net::TcpStream,
            std::net::SocketAddr,
            watch::Receiver<()>,
        );
        let serve = |(shared, stream, remote, watcher): ConnectionArgs| {
            crate::server::serve_connection(shared, stream, remote, watcher)
        };
        let connection = future_size(serve);
        let handle = future_size(
            |(shared, client, parts, body): (
                &'static GatewayState,
                Arc<ClientInfo>,
                &'static mut http::request::Parts,
                ClientBody,
            )| handle(shared, client, parts, body, HeadNotes::default()),
        );
        assert!(
            connection < 2048 && connection < handle,
            "the connection's future is {connection} bytes, a request's {handle}"
        );
        // The task's wrapper (one clock reading per poll) adds nothing to it: as an `async fn`
        // it held the connection's future twice.
        let task =
            future_size(|args: ConnectionArgs| crate::clock::one_clock_per_poll(serve(args)));
        assert_eq!(task, connection);
    }
}
