//! The client's request body as the gateway's steps see it: read by hyper, read whole by the
//! owned HTTP/1.1 path (`h1`: small `Content-Length` bodies only), a stream of an HTTP/2
//! connection served with the `h2` crate (`http2`), or none.
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Hyper(inner) => inner.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
            Kind::H2 { stream, .. } => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Hyper(inner) => inner.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::H2 { stream, .. } if stream.is_end_stream() => SizeHint::with_exact(0),
            Kind::H2 { length, .. } => length.map_or_else(SizeHint::new, SizeHint::with_exact),
        }
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
}
