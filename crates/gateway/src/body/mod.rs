//! Bodies streamed through the gateway, never buffered whole.
//!
//! [`RequestBody`] carries the client's body up and stops it at the body limit (413);
//! [`ResponseBody`] carries the upstream's body down, bounded by the route's deadline, or a small
//! body the gateway made itself. A response body keeps what the exchange holds — the client
//! connection's request count, the target's in-flight count, the pooled connection, the
//! bulkhead slot, the adaptive-concurrency place — until its last byte is out (it can outlive
//! the handler by minutes), without knowing what they are: each is a [`Held`] or any value.
//!
//! The response side is `response.rs`. This module imports nothing of the gateway.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::sync::lock;

mod response;

pub use response::ResponseBody;
pub(crate) use response::{materialize, UpstreamBody};

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
                let incoming = lock(slot).take()?;
                let (body, _) = RequestBody::new(incoming, self.limit);
                Some(body)
            }
        }
    }

    /// Whether [`reclaim`](Self::reclaim) would give the body back now (without taking it).
    pub(crate) fn available(&self) -> bool {
        match &self.kind {
            Claim::Empty | Claim::Buffered(_) => true,
            Claim::Waiting(slot) => lock(slot).is_some(),
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
            Source::Waiting(slot, _) => lock(slot).as_ref()?.whole_len()?,
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
            Source::Waiting(slot, _) => lock(slot).take()?.take_whole()?,
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
            let taken = lock(slot).take();
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
