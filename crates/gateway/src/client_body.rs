//! The client's request body as the gateway's steps see it: read by hyper, read whole by the
//! owned HTTP/1.1 path (`h1`: small `Content-Length` bodies), fed piece by piece by it while
//! the steps run (`h1`: larger ones, [`BodyFeeder`]), a stream of an HTTP/2 connection served
//! with the `h2` crate (`http2`), or none.
//!
//! This module imports nothing of the gateway.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Errors travel boxed between layers.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body.
#[derive(Debug)]
pub(crate) struct ClientBody(Kind);

#[derive(Debug)]
enum Kind {
    Hyper(Incoming),
    /// Read whole already (`None` once taken; an empty body is `None` from the start).
    Full(Option<Bytes>),
    /// Fed by the connection as it reads (`length` bytes in all, when known).
    Fed {
        feed: Arc<Feed>,
        length: Option<u64>,
    },
    /// An HTTP/2 stream's data, then its trailers.
    H2 {
        stream: h2::RecvStream,
        /// Its `content-length`, when the head gave one.
        length: Option<u64>,
        /// The data frames are over; the trailers (if any) come next.
        data_done: bool,
    },
}

impl ClientBody {
    /// A body hyper reads.
    pub(crate) fn hyper(inner: Incoming) -> Self {
        Self(Kind::Hyper(inner))
    }

    /// The body of an HTTP/2 stream, `length` long when its head said so (`h2` holds the
    /// stream to it).
    pub(crate) fn h2(stream: h2::RecvStream, length: Option<u64>) -> Self {
        Self(Kind::H2 {
            stream,
            length,
            data_done: false,
        })
    }

    /// A body read whole (empty: no body).
    pub(crate) fn full(bytes: Bytes) -> Self {
        Self(Kind::Full(Some(bytes).filter(|bytes| !bytes.is_empty())))
    }

    /// The length of a body read whole and not taken yet; `None` for a body still to be read.
    pub(crate) fn whole_len(&self) -> Option<usize> {
        match &self.0 {
            Kind::Full(bytes) => Some(bytes.as_ref().map_or(0, Bytes::len)),
            _ => None,
        }
    }

    /// The bytes of a body read whole (empty once taken); `None` for a body still to be read.
    pub(crate) fn take_whole(&mut self) -> Option<Bytes> {
        match &mut self.0 {
            Kind::Full(bytes) => Some(bytes.take().unwrap_or_default()),
            _ => None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map_err(|error| Box::new(error) as BoxError),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Kind::H2 {
                stream, data_done, ..
            } => poll_h2(stream, data_done, cx),
            Kind::Fed { feed, .. } => feed.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Hyper(inner) => inner.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
            Kind::H2 { stream, .. } => stream.is_end_stream(),
            Kind::Fed { feed, .. } => feed.is_over(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Hyper(inner) => inner.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::H2 { stream, .. } if stream.is_end_stream() => SizeHint::with_exact(0),
            Kind::H2 { length, .. } => length.map_or_else(SizeHint::new, SizeHint::with_exact),
            Kind::Fed { length, .. } => length.map_or_else(SizeHint::new, SizeHint::with_exact),
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Kind::Fed { feed, .. } = &self.0 {
            feed.reader_gone();
        }
    }
}

/// Bytes a [`BodyFeeder`] holds before the connection stops reading (back-pressure).
const FEED_ROOM: usize = 64 * 1024;

/// What the connection feeds and the body reads.
#[derive(Debug, Default)]
pub(crate) struct Feed {
    state: Mutex<FeedState>,
    /// The body's reader, waiting for bytes.
    reader: AtomicWaker,
    /// The connection, waiting for room.
    feeder: AtomicWaker,
}

#[derive(Debug, Default)]
struct FeedState {
    pieces: VecDeque<Bytes>,
    held: usize,
    end: FeedEnd,
    /// Trailer fields after the last piece (a chunked body's).
    trailers: Option<http::HeaderMap>,
    /// The reader went away before the end of the body.
    unread: bool,
    /// The reader asked for bytes while none were there.
    wanted: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FeedEnd {
    #[default]
    Open,
    /// Every byte was fed.
    Done,
    /// The client went away before the end.
    Broken,
    /// Nobody reads any more: what is fed is dropped.
    ReaderGone,
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.reader.register(cx.waker());
        let mut state = self.lock();
        if let Some(piece) = state.pieces.pop_front() {
            state.held -= piece.len();
            drop(state);
            self.feeder.wake();
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match state.end {
            FeedEnd::Done => Poll::Ready(state.trailers.take().map(|t| Ok(Frame::trailers(t)))),
            FeedEnd::ReaderGone => Poll::Ready(None),
            FeedEnd::Broken => Poll::Ready(Some(Err(
                "the body was cut short (the client went away) or its chunked framing is malformed"
                    .into(),
            ))),
            FeedEnd::Open => {
                if !state.wanted {
                    state.wanted = true;
                    drop(state);
                    self.feeder.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_over(&self) -> bool {
        let state = self.lock();
        state.pieces.is_empty() && state.trailers.is_none() && state.end != FeedEnd::Open
    }

    fn reader_gone(&self) {
        let mut state = self.lock();
        state.unread = !state.pieces.is_empty() || state.end == FeedEnd::Open;
        state.pieces.clear();
        state.held = 0;
        if state.end == FeedEnd::Open {
            state.end = FeedEnd::ReaderGone;
        }
        drop(state);
        self.feeder.wake();
    }
}

/// The connection's end of a body it feeds as it reads (the owned HTTP/1.1 path's bodies too
/// large to read whole first): bytes go in while there is room, the end or a break is told
/// once. Dropped before the end, it breaks the body.
#[derive(Debug)]
pub(crate) struct BodyFeeder(Arc<Feed>);

impl BodyFeeder {
    /// A feeder and the body it feeds, `length` bytes long (`None`: a chunked body).
    pub(crate) fn new(length: Option<u64>) -> (Self, ClientBody) {
        let feed = Arc::new(Feed::default());
        let body = ClientBody(Kind::Fed {
            feed: Arc::clone(&feed),
            length,
        });
        (Self(feed), body)
    }

    /// Ready when the body can take more (or nobody reads it any more: then what is fed is
    /// dropped); otherwise the task of `cx` is woken when it can.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.feeder.register(cx.waker());
        let state = self.0.lock();
        if state.held < FEED_ROOM || state.end != FeedEnd::Open {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether the body's reader went away before its end (the gateway answered without it:
    /// the connection then ends, as hyper's does).
    pub(crate) fn abandoned(&self) -> bool {
        self.0.lock().unread
    }

    /// Ready once the body's reader has asked for bytes none had come for (the moment to send
    /// `100 Continue` to a client that waits for it); otherwise the task of `cx` is woken then.
    pub(crate) fn poll_wanted(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.feeder.register(cx.waker());
        if self.0.lock().wanted {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ends the body with trailer fields (a chunked body's).
    pub(crate) fn finish_with(&self, trailers: http::HeaderMap) {
        let mut state = self.0.lock();
        if state.end == FeedEnd::Open {
            state.end = FeedEnd::Done;
            if !trailers.is_empty() {
                state.trailers = Some(trailers);
            }
        }
        drop(state);
        self.0.reader.wake();
    }

    /// Hands `piece` to the body; `last` when it is the end of it.
    pub(crate) fn feed(&self, piece: Bytes, last: bool) {
        let mut state = self.0.lock();
        if state.end == FeedEnd::Open {
            if !piece.is_empty() {
                state.held += piece.len();
                state.pieces.push_back(piece);
            }
            if last {
                state.end = FeedEnd::Done;
            }
        }
        drop(state);
        self.0.reader.wake();
    }
}

impl Drop for BodyFeeder {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if state.end == FeedEnd::Open {
            state.end = FeedEnd::Broken;
        }
        drop(state);
        self.0.reader.wake();
    }
}

/// The next frame of an HTTP/2 stream: its data (the window given back to the client as each
/// piece is taken, as hyper does), then its trailers.
fn poll_h2(
    stream: &mut h2::RecvStream,
    data_done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if !*data_done {
        match stream.poll_data(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                // The connection may already be gone; the next poll tells.
                let _ = stream.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(Box::new(error)))),
            Poll::Ready(None) => *data_done = true,
        }
    }
    match stream.poll_trailers(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
        Poll::Ready(Ok(None)) => Poll::Ready(None),
        Poll::Ready(Err(error)) => Poll::Ready(Some(Err(Box::new(error)))),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_full_body_is_read_once_with_its_length() {
        let body = ClientBody::full(Bytes::from_static(b"hello"));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let read = body.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(read, Some(Bytes::from_static(b"hello")));
        let none = ClientBody::full(Bytes::new());
        assert!(none.is_end_stream());
        assert_eq!(none.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_fed_body_arrives_in_order_and_holds_the_feeder_back_when_full() {
        let (feeder, body) = BodyFeeder::new(Some(FEED_ROOM as u64 + 3));
        assert_eq!(body.size_hint().exact(), Some(FEED_ROOM as u64 + 3));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(feeder.poll_room(&mut cx).is_ready());
        feeder.feed(Bytes::from(vec![b'a'; FEED_ROOM]), false);
        assert!(
            feeder.poll_room(&mut cx).is_pending(),
            "no room past FEED_ROOM"
        );
        let reader = tokio::spawn(async move { body.collect().await.map(|c| c.to_bytes()) });
        std::future::poll_fn(|cx| feeder.poll_room(cx)).await;
        feeder.feed(Bytes::from_static(b"bcd"), true);
        let read = reader.await.ok().and_then(Result::ok).unwrap_or_default();
        assert_eq!(read.len(), FEED_ROOM + 3);
        assert!(read.ends_with(b"abcd"));
    }

    #[tokio::test]
    async fn a_feeder_dropped_early_breaks_the_body_and_a_dropped_body_frees_the_feeder() {
        let (feeder, body) = BodyFeeder::new(Some(10));
        feeder.feed(Bytes::from_static(b"12345"), false);
        drop(feeder);
        assert!(body.collect().await.is_err(), "a cut body read as whole");

        let (feeder, body) = BodyFeeder::new(Some(FEED_ROOM as u64 * 2));
        feeder.feed(Bytes::from(vec![0; FEED_ROOM]), false);
        drop(body);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            feeder.poll_room(&mut cx).is_ready(),
            "nobody reads: room for ever"
        );
    }

    #[tokio::test]
    async fn a_chunked_body_ends_with_its_trailers() {
        let (feeder, body) = BodyFeeder::new(None);
        assert_eq!(body.size_hint().exact(), None);
        feeder.feed(Bytes::from_static(b"abc"), false);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("checksum", http::HeaderValue::from_static("42"));
        feeder.finish_with(trailers);
        let collected = body.collect().await.ok().unwrap_or_default();
        assert_eq!(
            collected.trailers().map(|t| t["checksum"].clone()),
            Some(http::HeaderValue::from_static("42"))
        );
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"abc"));
    }
}
