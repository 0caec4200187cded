//! The gateway's own HTTP/1.1 client side, for a request whose body it holds whole (none, or
//! read before the steps ran): the head written from the request's fields in one write with the
//! body, the answer's head read by `sekisho-h1` (`parse_response`), its body handed on whole
//! when it came with the head, or read from the connection as it comes. No task per
//! connection and no channel between the request and the connection (hyper's client has
//! both): the exchange runs in the request's own future, and the body owns the connection
//! until its end, then gives it back to the pool.
//!
//! A request with a streamed body (a large or chunked upload, an HTTP/2 stream) goes to hyper's
//! client connection as before (`Http1Pool::send`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use sekisho_h1::{parse_response, Chunk, ChunkedDecoder, Fields, Framing, RawFields, ResponseHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Http1Pool, OwnedHead, Slot};
use crate::body::{BoxError, UpstreamBody};
use crate::interim::InterimSink;

/// Bytes made room for before each read.
const READ_SIZE: usize = 8 * 1024;
/// Bytes made room for before each read of a body being streamed.
const BODY_READ_SIZE: usize = 32 * 1024;

/// One connection to a target, owned by the exchange using it (or idle in its pool).
pub(crate) struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The fields of the last head read (kept: no allocation per answer).
    fields: Fields,
    /// The last request's head as written (kept: no allocation per request).
    out: Vec<u8>,
    /// It carried an exchange before: a failure before any answer may be the target having
    /// closed it while idle.
    reused: bool,
    /// Its place under the target's bound (given back when the connection is dropped).
    slot: Slot,
}

impl Conn {
    pub(super) fn new(io: TcpStream, slot: Slot) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            fields: Fields::new(),
            out: Vec::new(),
            reused: false,
            slot,
        }
    }

    /// Whether an idle connection can take a request: nothing came on it (a close or stray
    /// bytes). Costs a system call only when the socket was reported readable.
    pub(super) fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
    }

    /// Whether it carried an exchange before.
    pub(super) fn is_reused(&self) -> bool {
        self.reused
    }

    /// The stream and its slot, for hyper's client connection.
    pub(super) fn into_parts(self) -> (TcpStream, Slot) {
        (self.io, self.slot)
    }
}

/// How an exchange failed.
pub(super) enum Failure {
    /// A reused connection failed before anything came back: the target most likely closed it
    /// while it was idle, and the request can go out again on another one.
    Stale(io::Error),
    /// The exchange failed.
    Broken(BoxError),
}

/// The head of a request as the target gets it: request line, fields (a body's length ours),
/// `late_fields` (lines already rendered), empty line.
fn encode_head(head: &OwnedHead<'_>, body_len: usize, out: &mut Vec<u8>) {
    let late_fields = head.late_fields;
    out.reserve(
        256 + late_fields[0].len()
            + late_fields[1].len()
            + head.request_id.map_or(0, <[u8]>::len)
            + head.headers.len() * 32,
    );
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers {
        // A body's length is the gateway's to state (it holds the body); an empty body's
        // fields go as they came, as hyper's client does.
        if (body_len > 0 && name == header::CONTENT_LENGTH) || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if body_len > 0 {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(late_fields[0]);
    if let Some(id) = head.request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(late_fields[1]);
    out.extend_from_slice(b"\r\n");
}

/// Sends `head` (encoded into the connection's own buffer) and `body` on `conn` and reads the
/// answer: interim answers go to `interim`, the final one comes back with its body (which gives
/// the connection back to `pool` when it ends, or at once when the body came with the head).
pub(super) async fn exchange(
    mut conn: Conn,
    head: &OwnedHead<'_>,
    body: &Bytes,
    interim: Option<&InterimSink>,
    pool: &Arc<Http1Pool>,
) -> Result<Response<UpstreamBody>, Failure> {
    let after_head = *head.method == http::Method::HEAD;
    conn.out.clear();
    encode_head(head, body.len(), &mut conn.out);
    let written = if body.is_empty() {
        conn.io.write_all(&conn.out).await
    } else {
        let mut both = Buf::chain(&conn.out[..], body.clone());
        conn.io.write_all_buf(&mut both).await
    };
    if let Err(error) = written {
        return Err(if conn.reused {
            Failure::Stale(error)
        } else {
            Failure::Broken(error.into())
        });
    }
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            let parsed = parse_response(&conn.buf, after_head, &mut conn.fields)
                .map_err(|error| Failure::Broken(error.into()))?;
            if let Some(parsed) = parsed {
                let mut bytes = conn.buf.split_to(parsed.len).freeze();
                if head.raw_answer {
                    // The fields stay as read when the answer allows it.
                    match parsed.raw(bytes, &mut conn.fields) {
                        Ok((answer, raw)) => {
                            return Ok(with_body(answer, Some(raw), conn, &parsed, pool))
                        }
                        Err(back) => bytes = back,
                    }
                }
                let answer = parsed
                    .response(&bytes, &mut conn.fields)
                    .map_err(|error| Failure::Broken(error.into()))?;
                if parsed.is_interim() {
                    if let Some(sink) = interim {
                        let (head, ()) = answer.into_parts();
                        sink.push_answer(head.status, head.headers);
                    }
                    continue;
                }
                return Ok(with_body(answer, None, conn, &parsed, pool));
            }
        }
        conn.buf.reserve(READ_SIZE);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) if !received && conn.reused => {
                return Err(Failure::Stale(io::ErrorKind::UnexpectedEof.into()))
            }
            Ok(0) => {
                return Err(Failure::Broken(
                    "the target closed the connection before its answer's head".into(),
                ))
            }
            Ok(_) => received = true,
            Err(error) if !received && conn.reused => return Err(Failure::Stale(error)),
            Err(error) => return Err(Failure::Broken(error.into())),
        }
    }
}

/// The answer with its body: whole when it came with the head (the connection then goes back
/// at once), otherwise read as it comes by a body that owns the connection.
fn with_body(
    answer: Response<()>,
    raw: Option<RawFields>,
    mut conn: Conn,
    parsed: &ResponseHead,
    pool: &Arc<Http1Pool>,
) -> Response<UpstreamBody> {
    let (framing, keep_alive) = (parsed.framing, parsed.keep_alive);
    let whole = match framing {
        Framing::None => Some(None),
        Framing::Length(length) if conn.buf.len() as u64 >= length => {
            // `length` fits in the buffer, hence in a usize.
            Some(Some(conn.buf.split_to(length as usize).freeze()).filter(|b| !b.is_empty()))
        }
        _ => None,
    };
    let body = match whole {
        Some(bytes) => {
            // Bytes beyond the answer: the target is not speaking HTTP/1.1 as it should.
            if keep_alive && conn.buf.is_empty() {
                conn.reused = true;
                pool.put_owned(conn);
            }
            match raw {
                Some(mut raw) => {
                    raw.set_body(bytes);
                    UpstreamBody::Raw(raw)
                }
                None => UpstreamBody::Whole(bytes),
            }
        }
        None => UpstreamBody::Stream(
            Box::pin(Streamed {
                conn: Some(conn),
                state: match framing {
                    Framing::Length(length) => State::Length(length),
                    Framing::Chunked => State::Chunked(ChunkedDecoder::new()),
                    Framing::None | Framing::UntilClose => State::UntilClose,
                },
                keep_alive,
                pool: Arc::clone(pool),
            }),
            raw,
        ),
    };
    answer.map(|()| body)
}

enum State {
    /// This many bytes still to hand on.
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// A body read from its connection as it comes; the connection goes back to its pool at the
/// end (when it can carry another request), or closes when the body is dropped before.
struct Streamed {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    pool: Arc<Http1Pool>,
}

impl Streamed {
    fn finish(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                conn.reused = true;
                self.pool.put_owned(conn);
            }
        }
    }

    /// The next piece the buffer holds, if any.
    fn next_piece(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        let conn = self.conn.as_mut()?;
        match &mut self.state {
            State::Length(left) => {
                if conn.buf.is_empty() {
                    return None;
                }
                let take = usize::try_from(*left).map_or(conn.buf.len(), |l| l.min(conn.buf.len()));
                let data = conn.buf.split_to(take).freeze();
                *left -= take as u64;
                if *left == 0 {
                    self.finish();
                }
                Some(Ok(Frame::data(data)))
            }
            State::Chunked(decoder) => match decoder.next(&mut conn.buf) {
                Ok(Some(Chunk::Data(data))) => Some(Ok(Frame::data(data))),
                Ok(Some(Chunk::End(trailers))) => {
                    self.finish();
                    Some(Ok(Frame::trailers(trailers)))
                }
                Ok(None) => None,
                Err(error) => {
                    self.conn = None;
                    Some(Err(error.into()))
                }
            },
            State::UntilClose => {
                (!conn.buf.is_empty()).then(|| Ok(Frame::data(conn.buf.split().freeze())))
            }
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(piece) = this.next_piece() {
                // No trailers at the end of a chunked body: the end itself.
                if let Ok(frame) = &piece {
                    if frame.trailers_ref().is_some_and(HeaderMap::is_empty) {
                        return Poll::Ready(None);
                    }
                }
                return Poll::Ready(Some(piece));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.buf.reserve(BODY_READ_SIZE);
            match conn.io.try_read_buf(&mut conn.buf) {
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(match this.state {
                        State::UntilClose => None,
                        _ => Some(Err(
                            "the target closed the connection before its answer's end".into(),
                        )),
                    });
                }
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    match conn.io.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(error)) => {
                            this.conn = None;
                            return Poll::Ready(Some(Err(error.into())));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(error) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.state, &self.conn) {
            (State::Length(left), Some(_)) => SizeHint::with_exact(*left),
            (_, None) => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }
}
