//! A request body the owned path feeds to the gateway's steps as it arrives (one too large to
//! read whole first, a chunked one, or one whose client waits for `100 Continue`): how its end
//! is found (`Content-Length`, or `sekisho_h1::ChunkedDecoder`), back-pressure through the
//! `BodyFeeder`, and the rest of it read while an early answer is written.

use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use sekisho_h1::{Chunk, ChunkedDecoder};

use super::READ_CHUNK;
use crate::body::ClientBody;
use crate::client_body::BodyFeeder;

/// A body being fed to the steps as it arrives.
pub(super) struct Fed {
    /// `None` once the body turned out malformed (the body then reads as broken).
    feeder: Option<BodyFeeder>,
    framing: Framing,
    /// `100 Continue` is still owed to a client that waits for it before sending.
    pub(super) continue_due: bool,
}

/// How a fed body's end is found.
enum Framing {
    /// Bytes of it not yet read.
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// What a fed body took of the bytes read.
pub(super) enum Absorbed {
    /// All of it came (what follows is the next request's).
    Done,
    /// More bytes must be read.
    NeedMore,
    /// Its framing is broken: the connection ends after this exchange.
    Broken,
}

impl Fed {
    /// The steps answered without reading the whole body.
    pub(super) fn abandoned(&self) -> bool {
        self.feeder.as_ref().is_none_or(BodyFeeder::abandoned)
    }

    /// A feeder for the body `head` announces, and the body it feeds.
    pub(super) fn new(head: &sekisho_h1::Head) -> (Self, ClientBody) {
        let (framing, length) = if head.chunked {
            (Framing::Chunked(ChunkedDecoder::new()), None)
        } else {
            (Framing::Length(head.body_length), Some(head.body_length))
        };
        let (feeder, body) = BodyFeeder::new(length);
        (
            Self {
                feeder: Some(feeder),
                framing,
                continue_due: head.expect_continue,
            },
            body,
        )
    }

    /// Ready once the steps want the body (see [`BodyFeeder::poll_wanted`]).
    pub(super) fn poll_wanted(&self, cx: &mut Context<'_>) -> Poll<()> {
        match &self.feeder {
            Some(feeder) => feeder.poll_wanted(cx),
            None => Poll::Pending,
        }
    }

    /// Moves what `buf` holds of the body into it while it has room (otherwise `Pending`,
    /// the task of `cx` woken when it has).
    pub(super) fn poll_absorb(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<Absorbed> {
        let Some(feeder) = &self.feeder else {
            return Poll::Ready(Absorbed::Broken);
        };
        loop {
            if buf.is_empty() {
                return Poll::Ready(Absorbed::NeedMore);
            }
            if feeder.poll_room(cx).is_pending() {
                return Poll::Pending;
            }
            match &mut self.framing {
                Framing::Length(left) => {
                    let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    feeder.feed(buf.split_to(take).freeze(), *left == 0);
                    if *left == 0 {
                        return Poll::Ready(Absorbed::Done);
                    }
                }
                Framing::Chunked(decoder) => match decoder.next(buf) {
                    Ok(Some(Chunk::Data(data))) => feeder.feed(data, false),
                    Ok(Some(Chunk::End(trailers))) => {
                        feeder.finish_with(trailers);
                        return Poll::Ready(Absorbed::Done);
                    }
                    Ok(None) => return Poll::Ready(Absorbed::NeedMore),
                    Err(error) => {
                        tracing::debug!(%error, "a chunked request body is malformed");
                        // Dropped: the body reads as broken, the call fails.
                        self.feeder = None;
                        return Poll::Ready(Absorbed::Broken);
                    }
                },
            }
        }
    }
}

/// Reads the rest of a body and feeds it, after what `buffered` holds of it, until it ends,
/// the client stops sending, or (dropped) the answer is written. Bytes past the body are
/// dropped: the connection ends after this exchange.
pub(super) async fn feed_rest<R: AsyncRead + Unpin>(
    mut reading: R,
    mut fed: Fed,
    mut buffered: BytesMut,
) {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        match std::future::poll_fn(|cx| fed.poll_absorb(cx, &mut buffered)).await {
            Absorbed::Done | Absorbed::Broken => return,
            Absorbed::NeedMore => {}
        }
        match reading.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => buffered.extend_from_slice(&chunk[..read]),
        }
    }
}
