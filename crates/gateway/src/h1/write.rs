//! An answer written by the owned HTTP/1.1 path: the head encoded as hyper's server would
//! (status line with its reason, the fields in order, `date` when absent, the body's framing),
//! interim answers, and the body streamed — a small body leaves in the same write as its head.

use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, Response, StatusCode};
use http_body::Body;
use sekisho_h1::RawFields;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::body::ResponseBody;
use crate::clock::http_date;
use crate::interim::Interim;
use crate::proxy::EarlyRefusal;

/// Body bytes copied next to the head (or the previous chunk) rather than written on their own.
const COPY_LIMIT: usize = 16 * 1024;

/// How the body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body bytes at all (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the writer notes of an answer's fields as it writes them: this hop's framing and
/// connection are its own.
struct Noted {
    /// The first readable `Content-Length`.
    declared: Option<u64>,
    has_date: bool,
    has_connection: bool,
    /// The client connection may stay open (a `Connection: close` ends it).
    keep_alive: bool,
}

impl Noted {
    /// Whether the field goes out: an unreadable or second length is dropped (one is written
    /// below when none is readable), the upstream's transfer coding too (the framing is this
    /// hop's). Standard names compare without hashing.
    fn passes(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if name == CONTENT_LENGTH {
            match (self.declared, sekisho_h1::content_length(value)) {
                (None, Some(length)) => self.declared = Some(length),
                _ => return false,
            }
        } else if name == TRANSFER_ENCODING {
            return false;
        } else if name == DATE {
            self.has_date = true;
        } else if name == CONNECTION {
            self.has_connection = true;
            if has_token(value, b"close") {
                self.keep_alive = false;
            }
        }
        true
    }
}

/// A bit for `name` (its length and first byte, modulo 64): a name whose bit is not in a set's
/// mask is not in the set. The names the gateway sets on an answer and the common upstream
/// ones (`content-type`, `content-length`, `date`, `server`) have bits of their own.
fn name_bit(name: &HeaderName) -> u64 {
    let name = name.as_str().as_bytes();
    1 << ((name.len() + usize::from(name.first().copied().unwrap_or(0))) % 64)
}

/// The connection's answer writer: its output buffer, reused while requests follow each other.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    out: Vec<u8>,
}

/// How writing an answer ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// The whole answer is out; the connection may carry another exchange if this is true.
    Done { keep_alive: bool },
    /// The body failed or lied about its length: the connection cannot be used again.
    Broken,
}

impl Writer {
    /// Gives back the output buffer's memory (an idle connection keeps none).
    pub(crate) fn release(&mut self) {
        self.out = Vec::new();
    }

    /// Writes interim answers now.
    pub(crate) async fn interim<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        answers: &[Interim],
    ) -> io::Result<()> {
        for answer in answers {
            status_line(&mut self.out, answer.status);
            fields(&mut self.out, &answer.headers);
            self.out.extend_from_slice(b"\r\n");
        }
        self.flush(io).await
    }

    /// Writes `response`: `is_head` for an answer to HEAD, `keep_alive` whether the client
    /// connection may stay open (a `Connection: close` in the answer ends it too). Lent, not
    /// given: its map and body are emptied as they are written, and the caller drops what is
    /// left.
    pub(crate) async fn response<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        response: &mut Response<ResponseBody>,
        is_head: bool,
        keep_alive: bool,
    ) -> io::Result<Written> {
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let body = response.body_mut();
        let no_body = is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        // One allocation for the head, and a small body when it will be copied after it (an
        // idle connection gave its buffer back; growing it field by field cost more than the
        // rest of the writing). Where the connection takes vectored writes, the body goes
        // beside the head instead (`held`).
        let small_body = body
            .size_hint()
            .exact()
            .filter(|&length| !no_body && length <= COPY_LIMIT as u64 && !io.is_write_vectored())
            .unwrap_or(0) as usize;
        // The upstream's fields as read, when the map holds none of them (`RawFields`).
        let raw = body.take_raw();
        let raw_count = raw.as_ref().map_or(0, RawFields::len);
        let out = &mut self.out;
        out.reserve(256 + 64 * (headers.len() + raw_count) + small_body);
        status_line(out, status);
        let mut noted = Noted {
            declared: None,
            has_date: false,
            has_connection: false,
            keep_alive,
        };
        if let Some(raw) = &raw {
            // Those the gateway set in the map replace the upstream's: written from the map.
            let set = &headers;
            let mask = set.keys().fold(0u64, |mask, name| mask | name_bit(name));
            for (name, value) in raw.iter() {
                let replaced = mask & name_bit(name) != 0 && set.keys().any(|set| set == name);
                if !replaced && noted.passes(name, value) {
                    field(out, name.as_str().as_bytes(), value);
                }
            }
            // The gateway's own field that rides with them (the request id).
            if let Some((name, value)) = raw.own() {
                if noted.passes(name, value.as_bytes()) {
                    field(out, name.as_str().as_bytes(), value.as_bytes());
                }
            }
        }
        for (name, value) in &headers {
            if noted.passes(name, value.as_bytes()) {
                field(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        let Noted {
            declared,
            has_date,
            has_connection,
            keep_alive,
        } = noted;
        if !has_date {
            field(out, b"date", &http_date());
        }
        let framing = if no_body {
            Framing::None
        } else if let Some(length) = declared {
            Framing::Length(length)
        } else if let Some(length) = body.size_hint().exact() {
            let mut digits = itoa::Buffer::new();
            field(out, b"content-length", digits.format(length).as_bytes());
            Framing::Length(length)
        } else {
            field(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        };
        if !keep_alive && !has_connection {
            field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        // Written: the map and the field list serve the next head read on this thread (the
        // map in the raw fields' box, when they came in one).
        match raw {
            Some(raw) => raw.recycle_with(headers),
            None => sekisho_h1::recycle(headers),
        }
        if framing == Framing::None {
            // A body HEAD or the status forbids is dropped unread (it may hold a connection).
            *body = ResponseBody::empty();
            self.flush(io).await?;
            return Ok(Written::Done { keep_alive });
        }
        // A body's bytes that go out after the head in the same vectored write, not copied
        // after it (the common small answer: the body as the upstream's reader holds it). The
        // request's, not the connection's: an idle connection keeps none.
        let mut held: Option<Bytes> = None;
        let mut remaining = match framing {
            Framing::Length(length) => Some(length),
            _ => None,
        };
        loop {
            let frame = match poll_now(body) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Nothing more yet: what is buffered goes out before waiting.
                    self.flush_held(io, held.take()).await?;
                    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(error)) => {
                    tracing::debug!(%error, "the answer's body failed while streaming");
                    let _ = self.flush_held(io, held.take()).await;
                    return Ok(Written::Broken);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers: not forwarded on HTTP/1.1 (hyper's server does not either
                    // unless the client asked with `TE: trailers`).
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            if let Some(left) = &mut remaining {
                let Some(after) = left.checked_sub(data.len() as u64) else {
                    tracing::debug!("the answer's body is longer than its Content-Length");
                    let _ = self.flush_held(io, held.take()).await;
                    return Ok(Written::Broken);
                };
                *left = after;
            }
            self.body_bytes(io, data, framing == Framing::Chunked, &mut held)
                .await?;
        }
        if remaining.is_some_and(|left| left > 0) {
            tracing::debug!("the answer's body ended before its Content-Length");
            let _ = self.flush_held(io, held.take()).await;
            return Ok(Written::Broken);
        }
        if framing == Framing::Chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush_held(io, held.take()).await?;
        Ok(Written::Done { keep_alive })
    }

    /// Writes a refusal decided before its request was built (`proxy::early`), in one write:
    /// the same bytes [`Writer::response`] writes for the edge's answer to that error (fields in
    /// the order `handle` sets them, then `date`, the length, and `connection: close` when the
    /// connection ends).
    pub(crate) async fn refusal<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        early: &EarlyRefusal,
        is_head: bool,
        keep_alive: bool,
    ) -> io::Result<Written> {
        let refusal = &early.refusal;
        let out = &mut self.out;
        out.reserve(224 + refusal.body.len());
        status_line(out, refusal.status);
        field(out, b"content-type", b"application/json");
        let mut digits = itoa::Buffer::new();
        if let Some(after) = refusal.retry_after {
            field(out, b"retry-after", digits.format(after).as_bytes());
        }
        if early.close {
            field(out, b"connection", b"close");
        }
        field(out, b"x-request-id", early.request_id.as_bytes());
        field(out, b"date", &http_date());
        if !is_head {
            field(
                out,
                b"content-length",
                digits.format(refusal.body.len()).as_bytes(),
            );
        }
        let keep_alive = keep_alive && !early.close;
        if !keep_alive && !early.close {
            field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if !is_head {
            out.extend_from_slice(&refusal.body);
        }
        self.flush(io).await?;
        Ok(Written::Done { keep_alive })
    }

    async fn body_bytes<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        data: Bytes,
        chunked: bool,
        held: &mut Option<Bytes>,
    ) -> io::Result<()> {
        // What is written next goes after the bytes held beside the head.
        if let Some(before) = held.take() {
            self.out.extend_from_slice(&before);
        }
        if chunked {
            self.out
                .extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
        }
        if data.len() <= COPY_LIMIT && !chunked && io.is_write_vectored() {
            // Not copied: written after the head by the same vectored write (one system call,
            // one copy — the kernel's — of the upstream's bytes).
            *held = Some(data);
            return Ok(());
        } else if data.len() <= COPY_LIMIT {
            self.out.extend_from_slice(&data);
        } else {
            // A large one goes out now, after what is buffered, as it lies.
            self.flush_held(io, Some(data)).await?;
        }
        if chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        if self.out.len() > COPY_LIMIT {
            self.flush(io).await?;
        }
        Ok(())
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        self.flush_held(io, None).await
    }

    /// Writes `out`, then `held` (a body's bytes kept beside the head), in as few writes as
    /// the connection takes them.
    async fn flush_held<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        held: Option<Bytes>,
    ) -> io::Result<()> {
        if let Some(mut held) = held {
            let mut from = 0;
            while from < self.out.len() || held.has_remaining() {
                let slices = [io::IoSlice::new(&self.out[from..]), io::IoSlice::new(&held)];
                let written = io.write_vectored(&slices).await?;
                if written == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                let of_out = written.min(self.out.len() - from);
                from += of_out;
                held.advance(written - of_out);
            }
            self.out.clear();
        } else if !self.out.is_empty() {
            io.write_all(&self.out).await?;
            self.out.clear();
        }
        io.flush().await
    }
}

/// The body's next frame if it is there now (the task is woken when it comes otherwise).
fn poll_now(
    body: &mut ResponseBody,
) -> Poll<Option<Result<http_body::Frame<Bytes>, crate::body::BoxError>>> {
    let waker = futures_util::task::noop_waker_ref();
    Pin::new(body).poll_frame(&mut std::task::Context::from_waker(waker))
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a comma-separated list holds `token` (any case).
fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn written(
        mut response: Response<ResponseBody>,
        is_head: bool,
        keep_alive: bool,
    ) -> (String, Written) {
        let mut writer = Writer::default();
        let mut out = Vec::new();
        let result = writer
            .response(&mut out, &mut response, is_head, keep_alive)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (String::from_utf8_lossy(&out).into_owned(), result)
    }

    #[tokio::test]
    async fn a_full_body_gets_its_length_and_the_date() {
        let mut response = Response::new(ResponseBody::full(Bytes::from_static(b"hello")));
        response
            .headers_mut()
            .insert("x-a", http::HeaderValue::from_static("1"));
        let (text, result) = written(response, false, true).await;
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: "),
            "{text}"
        );
        assert!(
            text.ends_with("GMT\r\ncontent-length: 5\r\n\r\nhello"),
            "{text}"
        );
        assert_eq!(result, Written::Done { keep_alive: true });
    }

    #[tokio::test]
    async fn head_and_no_content_have_no_body_and_close_is_said() {
        let mut response = Response::new(ResponseBody::full(Bytes::from_static(b"hello")));
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, http::HeaderValue::from_static("5"));
        let (text, _) = written(response, true, false).await;
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
        let mut none = Response::new(ResponseBody::empty());
        *none.status_mut() = StatusCode::NO_CONTENT;
        let (text, _) = written(none, false, true).await;
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
    }

    #[tokio::test]
    async fn an_answer_saying_close_ends_the_connection() {
        let mut response = Response::new(ResponseBody::empty());
        response
            .headers_mut()
            .insert(CONNECTION, http::HeaderValue::from_static("close"));
        let (text, result) = written(response, false, true).await;
        assert_eq!(result, Written::Done { keep_alive: false });
        assert_eq!(text.matches("connection").count(), 1, "{text}");
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_length_breaks_the_connection() {
        let mut response = Response::new(ResponseBody::full(Bytes::from_static(b"hi")));
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, http::HeaderValue::from_static("5"));
        let (_, result) = written(response, false, true).await;
        assert_eq!(result, Written::Broken);
    }

    /// A connection that takes at most seven bytes per write, vectored or not.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let taken = buf.len().min(7);
            self.get_mut().0.extend_from_slice(&buf[..taken]);
            Poll::Ready(Ok(taken))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut taken = 0;
            for buf in bufs {
                let some = buf.len().min(7 - taken);
                this.0.extend_from_slice(&buf[..some]);
                taken += some;
            }
            Poll::Ready(Ok(taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What the writer puts on a connection that takes seven bytes a write, for an answer it
    /// must finish (kept alive).
    async fn through_trickle(response: &mut Response<ResponseBody>) -> Vec<u8> {
        let mut io = Trickle(Vec::new());
        let result = Writer::default()
            .response(&mut io, response, false, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result, Written::Done { keep_alive: true });
        io.0
    }

    /// The body held beside the head (a vectored write) arrives whole and in order when the
    /// connection takes a few bytes at a time: each write's count is split between the head's
    /// buffer and the body.
    #[tokio::test]
    async fn a_body_beside_its_head_survives_short_writes() {
        let body: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
        let mut response = Response::new(ResponseBody::full(Bytes::from(body.clone())));
        response
            .headers_mut()
            .insert("x-a", http::HeaderValue::from_static("1"));
        let written = through_trickle(&mut response).await;
        let text = String::from_utf8_lossy(&written).into_owned();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\n"), "{text}");
        let (_, written_body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert_eq!(written_body.as_bytes(), &body[..], "{text}");
    }

    /// A body over the copy limit goes out as it lies, after the head, through the same
    /// short writes.
    #[tokio::test]
    async fn a_large_body_after_its_head_survives_short_writes() {
        let body: Vec<u8> = (0..COPY_LIMIT + 4_000)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let mut response = Response::new(ResponseBody::full(Bytes::from(body.clone())));
        let written = through_trickle(&mut response).await;
        let Some(at) = written.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!("no end of head");
        };
        assert_eq!(&written[at + 4..], &body[..]);
    }

    #[test]
    fn the_date_has_the_http_form() {
        let date = http_date();
        let text = std::str::from_utf8(&date).unwrap_or_default();
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
    }
}
