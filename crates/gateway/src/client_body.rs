//! The client's request body as the gateway's steps see it: read by hyper, read whole by the
//! owned HTTP/1.1 path (`h1`: small `Content-Length` bodies only), or none.
//!
//! This module imports nothing of the gateway.

use std::pin::Pin;
use std::task::{Context, Poll};

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
}

impl ClientBody {
    /// A body hyper reads.
    pub(crate) fn hyper(inner: Incoming) -> Self {
        Self(Kind::Hyper(inner))
    }

    /// A body read whole (empty: no body).
    pub(crate) fn full(bytes: Bytes) -> Self {
        Self(Kind::Full(Some(bytes).filter(|bytes| !bytes.is_empty())))
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Hyper(inner) => inner.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Hyper(inner) => inner.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
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
}
