//! Bodies streamed through the gateway, never buffered whole.
//!
//! [`RequestBody`] carries the client's body up and stops it at the body limit (413);
//! [`ResponseBody`] carries the upstream's body down, bounded by the route's deadline, or a small
//! body the gateway made itself. A response body keeps what the exchange holds — the client
//! connection's request count, the target's in-flight count, the pooled connection, the
//! bulkhead slot, the adaptive-concurrency place — until its last byte is out (it can outlive
//! the handler by minutes), without knowing what they are: each is a [`Held`] or any value.
//!
//! This module imports nothing of the gateway.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use sekisho_h1::RawFields;
use sekisho_policy::bulkhead::Slot;
use sekisho_policy::concurrency::Permit as ConcurrencyPermit;

/// Puts the upstream's fields `response`'s body still carries as read into its map (before
/// what the gateway set there): for a writer that reads the map (hyper's, HTTP/2's).
pub(crate) fn materialize(response: &mut http::Response<ResponseBody>) {
    if let Some(raw) = response.body_mut().take_raw() {
        let over = std::mem::take(response.headers_mut());
        *response.headers_mut() = raw.into_map(over);
    }
}

/// Someone owed a call when an exchange is over (a count to decrease).
pub(crate) trait Release: Send + Sync + 'static {
    /// The exchange is over.
    fn release(&self);
}

/// A [`Release`] owed once, when this is dropped. Made from an `Arc` the owner already has, so
/// it costs no allocation.
pub(crate) struct Held(Arc<dyn Release>);

impl Held {
    /// Owes `owner` one release.
    pub(crate) fn new(owner: Arc<dyn Release>) -> Self {
        Self(owner)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

pub(crate) use crate::client_body::{BoxError, ClientBody};

/// The request body went over its limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub(crate) struct BodyTooLarge {
    /// The limit in force.
    pub limit: u64,
}

/// The client's body could not be read (aborted, malformed chunked encoding).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ClientBodyError(#[source] pub BoxError);

/// The route's deadline passed while the response body was streaming.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the route's deadline passed while the response was streaming")]
pub(crate) struct BodyDeadline;

/// The client's request body on its way to the upstream.
///
/// A body is handed to the upstream client before the connection to the target exists. If that
/// connection fails, the body was never read and the request may go to another target: so the
/// body waits in a [`BodyClaim`] until the client first reads it, and the proxy can take it back
/// from the claim after a failed connect.
pub(crate) struct RequestBody {
    source: Source,
    remaining: u64,
    limit: u64,
}

enum Source {
    /// No body at all (most GETs): nothing to take back, nothing to allocate.
    Empty,
    /// A body read whole beforehand so that it can be sent again (retries).
    Buffered(Option<Bytes>),
    /// Not read yet: still in the claim.
    Waiting(Arc<Mutex<Option<ClientBody>>>, SizeHint),
    /// Being read.
    Reading(ClientBody),
}

/// The proxy's hold on a request body that the upstream client has not read yet.
pub(crate) struct BodyClaim {
    kind: Claim,
    limit: u64,
}

enum Claim {
    Empty,
    Waiting(Arc<Mutex<Option<ClientBody>>>),
    Buffered(Bytes),
}

impl BodyClaim {
    /// The body again, for another try: always when there is none or it was buffered, and a
    /// streamed one only if nothing of it was read (`None` once the client started reading it).
    pub(crate) fn reclaim(&self) -> Option<RequestBody> {
        match &self.kind {
            Claim::Empty => Some(RequestBody::empty(self.limit)),
            Claim::Buffered(bytes) => Some(RequestBody {
                source: Source::Buffered(Some(bytes.clone())),
                remaining: self.limit,
                limit: self.limit,
            }),
            Claim::Waiting(slot) => {
                let incoming = slot.lock().unwrap_or_else(|p| p.into_inner()).take()?;
                let (body, _) = RequestBody::new(incoming, self.limit);
                Some(body)
            }
        }
    }

    /// Whether [`reclaim`](Self::reclaim) would give the body back now (without taking it).
    pub(crate) fn available(&self) -> bool {
        match &self.kind {
            Claim::Empty | Claim::Buffered(_) => true,
            Claim::Waiting(slot) => slot.lock().unwrap_or_else(|p| p.into_inner()).is_some(),
        }
    }

    /// Whether the body can be sent again after it was sent once (none, or buffered).
    pub(crate) fn replayable(&self) -> bool {
        !matches!(self.kind, Claim::Waiting(_))
    }
}

impl fmt::Debug for BodyClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Claim::Empty => "empty",
            Claim::Waiting(_) => "waiting",
            Claim::Buffered(_) => "buffered",
        };
        f.debug_struct("BodyClaim").field("kind", &kind).finish()
    }
}

impl RequestBody {
    /// Wraps `inner`, allowing at most `limit` bytes through; the claim can take it back until
    /// it is first read.
    pub(crate) fn new(inner: ClientBody, limit: u64) -> (Self, BodyClaim) {
        if inner.is_end_stream() {
            return (
                Self::empty(limit),
                BodyClaim {
                    kind: Claim::Empty,
                    limit,
                },
            );
        }
        let hint = inner.size_hint();
        let slot = Arc::new(Mutex::new(Some(inner)));
        (
            Self {
                source: Source::Waiting(Arc::clone(&slot), hint),
                remaining: limit,
                limit,
            },
            BodyClaim {
                kind: Claim::Waiting(slot),
                limit,
            },
        )
    }

    /// Reads `inner` whole (at most `limit` bytes) so that it can be sent more than once.
    pub(crate) async fn buffer(
        inner: ClientBody,
        limit: u64,
    ) -> Result<(Self, BodyClaim), BoxError> {
        use http_body_util::BodyExt;
        let limited =
            http_body_util::Limited::new(inner, usize::try_from(limit).unwrap_or(usize::MAX));
        let bytes = match limited.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return Err(if error.is::<http_body_util::LengthLimitError>() {
                    Box::new(BodyTooLarge { limit })
                } else {
                    Box::new(ClientBodyError(error))
                })
            }
        };
        Ok((
            Self {
                source: Source::Buffered(Some(bytes.clone())),
                remaining: limit,
                limit,
            },
            BodyClaim {
                kind: Claim::Buffered(bytes),
                limit,
            },
        ))
    }

    /// No body at all, and a claim that always gives it back (a background refresh).
    pub(crate) fn none(limit: u64) -> (Self, BodyClaim) {
        (
            Self::empty(limit),
            BodyClaim {
                kind: Claim::Empty,
                limit,
            },
        )
    }

    fn empty(limit: u64) -> Self {
        Self {
            source: Source::Empty,
            remaining: limit,
            limit,
        }
    }
}

impl RequestBody {
    /// The length of a body the gateway holds whole (none: 0) and may send as it is — within
    /// the limit, not being read; `None` for one still to be read from the client.
    pub(crate) fn whole_len(&self) -> Option<usize> {
        let length = match &self.source {
            Source::Empty => 0,
            Source::Buffered(bytes) => bytes.as_ref().map_or(0, Bytes::len),
            Source::Waiting(slot, _) => slot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()?
                .whole_len()?,
            Source::Reading(_) => return None,
        };
        (length as u64 <= self.remaining).then_some(length)
    }

    /// The body's bytes when [`whole_len`](Self::whole_len) says the gateway holds them (taken
    /// out of the claim like a first read: a streamed body is not sent twice); `None` otherwise.
    pub(crate) fn take_whole(&mut self) -> Option<Bytes> {
        self.whole_len()?;
        let bytes = match &mut self.source {
            Source::Empty => Bytes::new(),
            Source::Buffered(bytes) => bytes.take().unwrap_or_default(),
            Source::Waiting(slot, _) => slot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()?
                .take_whole()?,
            Source::Reading(_) => return None,
        };
        self.source = Source::Empty;
        Some(bytes)
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("remaining", &self.remaining)
            .field("limit", &self.limit)
            .finish()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Source::Waiting(slot, _) = &this.source {
            let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            this.source = match taken {
                Some(incoming) => Source::Reading(incoming),
                // Taken back by the proxy: this try was abandoned.
                None => Source::Empty,
            };
        }
        let inner = match &mut this.source {
            Source::Reading(inner) => inner,
            Source::Buffered(bytes) => {
                return Poll::Ready(
                    bytes
                        .take()
                        .filter(|b| !b.is_empty())
                        .map(|b| Ok(Frame::data(b))),
                )
            }
            _ => return Poll::Ready(None),
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let length = data.len() as u64;
                    if length > this.remaining {
                        this.remaining = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                    this.remaining -= length;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(error)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Empty => true,
            Source::Buffered(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Source::Waiting(..) => false,
            Source::Reading(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Empty => SizeHint::with_exact(0),
            Source::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Source::Waiting(_, hint) => *hint,
            Source::Reading(inner) => inner.size_hint(),
        }
    }
}

/// An upstream answer's body as the client side read it. The gateway's own client side may
/// leave the answer's fields as it read them (`RawFields`, none of them in the answer's map):
/// they go with the body to [`ResponseBody`], whose writer writes them through.
pub(crate) enum UpstreamBody {
    /// Read by hyper's client connection (h2c targets, requests with a streamed body).
    Hyper(Incoming),
    /// Came whole with the head (`None`: no body), read by the gateway's own client side.
    Whole(Option<Bytes>),
    /// Came whole with the head, which the fields stayed as read of; the body is carried by the
    /// fields' box (`RawFields::take_body`): one pointer, so this enum stays the size of
    /// hyper's `Incoming`.
    Raw(RawFields),
    /// Read from the connection as it comes, by the gateway's own client side.
    Stream(
        Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>,
        Option<RawFields>,
    ),
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hyper(_) => "UpstreamBody::Hyper",
            Self::Whole(_) => "UpstreamBody::Whole",
            Self::Raw(_) => "UpstreamBody::Raw",
            Self::Stream(..) => "UpstreamBody::Stream",
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
            Self::Whole(bytes) => Poll::Ready(bytes.take().map(|data| Ok(Frame::data(data)))),
            Self::Raw(raw) => Poll::Ready(raw.take_body().map(|data| Ok(Frame::data(data)))),
            Self::Stream(body, _) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(body) => body.is_end_stream(),
            Self::Whole(bytes) => bytes.is_none(),
            Self::Raw(raw) => raw.body_len() == 0,
            Self::Stream(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(body) => body.size_hint(),
            Self::Raw(raw) => SizeHint::with_exact(raw.body_len() as u64),
            Self::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Stream(body, _) => body.size_hint(),
        }
    }
}

enum Kind {
    Empty,
    /// A whole body, and the upstream's fields as read when they came with it ([`UpstreamBody`]).
    Full(Option<Bytes>, Option<RawFields>),
    Upstream {
        body: UpstreamBody,
        deadline: Option<Instant>,
        /// Made the first time the body has to wait (most small bodies never do).
        timer: Option<Pin<Box<Sleep>>>,
    },
    /// Bytes already read, then the rest of another body (a response too large to cache).
    Prefixed(Option<Bytes>, Box<ResponseBody>),
}

/// A response body on its way to the client. Boxed: an answer (`Response<ResponseBody>`) is
/// moved some twenty times between the upstream and the writer, and as 256 bytes each move was a
/// call to `memcpy`; with the body one pointer, the answer is 120 bytes, copied in place.
pub struct ResponseBody(Box<Inner>);

struct Inner {
    kind: Kind,
    /// Releases owed when the body is done (the request's, the target's).
    held: [Option<Held>; 2],
    bulkhead: Option<Slot>,
    concurrency: Option<ConcurrencyPermit>,
    /// Anything else kept to the end (the pooled connection the body comes on).
    kept: Option<Box<dyn Send>>,
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0.kind {
            Kind::Empty => "empty",
            Kind::Full(..) => "full",
            Kind::Upstream { .. } => "upstream",
            Kind::Prefixed(..) => "prefixed",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl ResponseBody {
    /// No body.
    pub(crate) fn empty() -> Self {
        Self(Box::new(Inner {
            kind: Kind::Empty,
            held: [None, None],
            bulkhead: None,
            concurrency: None,
            kept: None,
        }))
    }

    /// A body the gateway made.
    pub fn full(bytes: Bytes) -> Self {
        Self(Box::new(Inner {
            kind: Kind::Full(Some(bytes), None),
            held: [None, None],
            bulkhead: None,
            concurrency: None,
            kept: None,
        }))
    }

    /// The upstream's body, cut off when `deadline` fires.
    pub(crate) fn upstream(body: UpstreamBody, deadline: Option<Instant>) -> Self {
        let kind = match body {
            // Here already: no deadline to watch.
            UpstreamBody::Whole(None) => Kind::Empty,
            UpstreamBody::Whole(bytes) => Kind::Full(bytes, None),
            UpstreamBody::Raw(mut raw) => Kind::Full(raw.take_body(), Some(raw)),
            body => Kind::Upstream {
                body,
                deadline,
                timer: None,
            },
        };
        Self(Box::new(Inner {
            kind,
            held: [None, None],
            bulkhead: None,
            concurrency: None,
            kept: None,
        }))
    }

    /// The upstream's fields as read, when none of them is in the answer's map: the owned
    /// HTTP/1.1 writer writes them through ([`RawFields::iter`]); any other writer puts them
    /// in the map first ([`materialize`]).
    pub(crate) fn raw_mut(&mut self) -> Option<&mut RawFields> {
        self.raw_slot().and_then(Option::as_mut)
    }

    /// The upstream's fields as read, taken (see [`ResponseBody::raw_mut`]).
    pub(crate) fn take_raw(&mut self) -> Option<RawFields> {
        self.raw_slot().and_then(Option::take)
    }

    /// Where the raw fields are kept: in the body's kind (which has the room), not beside it —
    /// a `ResponseBody` is moved several times per request.
    fn raw_slot(&mut self) -> Option<&mut Option<RawFields>> {
        match &mut self.0.kind {
            Kind::Full(_, raw)
            | Kind::Upstream {
                body: UpstreamBody::Stream(_, raw),
                ..
            } => Some(raw),
            _ => None,
        }
    }

    /// `prefix`, then the rest of `rest` (which keeps its own guards).
    pub(crate) fn prefixed(prefix: Bytes, rest: ResponseBody) -> Self {
        Self(Box::new(Inner {
            kind: Kind::Prefixed(Some(prefix), Box::new(rest)),
            held: [None, None],
            bulkhead: None,
            concurrency: None,
            kept: None,
        }))
    }

    /// Keeps the upstream's bulkhead slot taken until the body is done.
    pub(crate) fn hold_slot(&mut self, slot: Option<Slot>) {
        self.0.bulkhead = slot;
    }

    /// Keeps the route's adaptive concurrency place taken until the body is done.
    pub(crate) fn hold_concurrency(&mut self, permit: ConcurrencyPermit) {
        self.0.concurrency = Some(permit);
    }

    /// Owes `held` its release when the body is done.
    pub(crate) fn hold(&mut self, held: Held) {
        match &mut self.0.held {
            [free @ None, _] | [_, free @ None] => *free = Some(held),
            // More than two: the extra one is kept as a value (rare, so the box is fine).
            [Some(_), Some(_)] => self.keep(held),
        }
    }

    /// Keeps `value` alive until the body is done.
    pub(crate) fn keep(&mut self, value: impl Send + 'static) {
        self.0.kept = Some(match self.0.kept.take() {
            None => Box::new(value),
            Some(earlier) => Box::new((earlier, value)),
        });
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self.get_mut().0;
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes, _) => Poll::Ready(bytes.take().map(|data| Ok(Frame::data(data)))),
            Kind::Prefixed(prefix, rest) => match prefix.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            Kind::Upstream {
                body,
                deadline,
                timer,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(frame) => Poll::Ready(frame),
                Poll::Pending => {
                    let expired = deadline.is_some_and(|at| {
                        timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
                            .as_mut()
                            .poll(cx)
                            .is_ready()
                    });
                    if expired {
                        Poll::Ready(Some(Err(Box::new(BodyDeadline) as BoxError)))
                    } else {
                        Poll::Pending
                    }
                }
            },
        };
        if let Poll::Ready(None) = polled {
            // The exchange is over as soon as the last frame is out, not when hyper drops us.
            this.held = [None, None];
            this.bulkhead = None;
            this.concurrency = None;
            this.kept = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.0.kind {
            Kind::Empty => true,
            Kind::Full(bytes, _) => bytes.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Prefixed(prefix, rest) => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes, _) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Prefixed(prefix, rest) => {
                let extra = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer stays small enough to be copied in place (no call to `memcpy`): its body is
    /// one pointer.
    #[test]
    fn an_answer_is_its_head_and_a_pointer() {
        assert_eq!(
            std::mem::size_of::<http::Response<ResponseBody>>(),
            std::mem::size_of::<http::response::Parts>() + std::mem::size_of::<usize>()
        );
    }

    /// The fields as read ride in the bodies without making them larger: both are moved
    /// several times per request, inside futures copied into their boxes.
    #[test]
    fn carrying_the_raw_fields_grows_no_body() {
        assert_eq!(
            std::mem::size_of::<UpstreamBody>(),
            std::mem::size_of::<Incoming>()
        );
        // Every kind fits beside the largest one (the upstream's body with its deadline).
        assert_eq!(
            std::mem::size_of::<Kind>(),
            std::mem::size_of::<(UpstreamBody, Option<Instant>, Option<Pin<Box<Sleep>>>)>()
        );
    }
}
