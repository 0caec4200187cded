//! The response side of the bodies: an upstream answer's body as the client side read it
//! ([`UpstreamBody`]), and the body on its way to the client ([`ResponseBody`]: deadline, what
//! the exchange holds, the upstream's fields as read).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use sekisho_h1::RawFields;
use sekisho_policy::bulkhead::Slot;
use sekisho_policy::concurrency::Permit as ConcurrencyPermit;
use tokio::time::{Instant, Sleep};

use super::{BodyDeadline, BoxError, Held};

/// Puts the upstream's fields `response`'s body still carries as read into its map (before
/// what the gateway set there): for a writer that reads the map (hyper's, HTTP/2's).
pub(crate) fn materialize(response: &mut http::Response<ResponseBody>) {
    if let Some(raw) = response.body_mut().take_raw() {
        let over = std::mem::take(response.headers_mut());
        *response.headers_mut() = raw.into_map(over);
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
    /// A body of `kind` that holds nothing yet.
    fn of(kind: Kind) -> Self {
        Self(Box::new(Inner {
            kind,
            held: [None, None],
            bulkhead: None,
            concurrency: None,
            kept: None,
        }))
    }

    /// No body.
    pub(crate) fn empty() -> Self {
        Self::of(Kind::Empty)
    }

    /// A body the gateway made.
    pub fn full(bytes: Bytes) -> Self {
        Self::of(Kind::Full(Some(bytes), None))
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
        Self::of(kind)
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
        Self::of(Kind::Prefixed(Some(prefix), Box::new(rest)))
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
