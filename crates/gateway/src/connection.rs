//! One client connection: its clocks (idle and header-read deadlines), and the swap of hyper's
//! bare error answers for the contract's JSON.
//!
//! hyper's own header-read timer starts as soon as a keep-alive connection goes idle, so it would
//! cut idle connections at the slowloris deadline. Instead, each connection keeps a small
//! [`ConnState`]: requests in flight, when it went idle, and when the first byte of the next
//! request head arrived. A [`watchdog`] per connection sleeps until the nearest deadline and
//! closes the connection when one has passed: `idle_timeout` with no request, or
//! `header_read_timeout` from the first byte of a head to the complete head.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::{Held, Release};
use crate::edge::raw_error_for_status;
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::woken::WokenOnly;

/// What the scan of the current request head found (bits of `ConnState::head_flags`).
const SAW_CONTENT_LENGTH: u8 = 1;
const SAW_TRANSFER_ENCODING: u8 = 2;
const HEAD_COMPLETE: u8 = 4;

/// Bytes read and thrown away after our answer, at most, before the connection is closed.
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// Time spent draining after our answer, at most.
const LINGER_MAX_TIME: Duration = Duration::from_secs(2);

/// When the connection went idle, and when the first byte of the head being read came.
#[derive(Debug)]
struct Clocks {
    idle_since: Instant,
    head_since: Option<Instant>,
}

/// Shared by a connection's I/O, its requests and its watchdog.
#[derive(Debug)]
pub(crate) struct ConnState {
    in_flight: AtomicU32,
    /// Behind a lock the watchdog rarely takes: a stamp is a clock read and a store (as
    /// milliseconds in atomics, each cost a `duration_since` too — twice per request).
    clocks: Mutex<Clocks>,
    is_h2: AtomicBool,
    saw_first_bytes: AtomicBool,
    head_flags: AtomicU8,
    metrics: Arc<Metrics>,
}

impl ConnState {
    /// A connection that just opened (idle, nothing read).
    pub(crate) fn new(metrics: Arc<Metrics>, is_h2: bool) -> Arc<Self> {
        metrics.connections_open.inc();
        metrics.connections_total.inc();
        Arc::new(Self {
            in_flight: AtomicU32::new(0),
            clocks: Mutex::new(Clocks {
                idle_since: crate::clock::now(),
                head_since: None,
            }),
            is_h2: AtomicBool::new(is_h2),
            saw_first_bytes: AtomicBool::new(false),
            head_flags: AtomicU8::new(0),
            metrics,
        })
    }

    /// A request head was parsed and handed to the gateway.
    pub(crate) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        lock(&self.clocks).head_since = None;
        let flags = self.head_flags.swap(0, Ordering::Relaxed);
        self.metrics.requests_in_flight.inc();
        RequestGuard {
            held: Held::new(Arc::clone(self) as Arc<dyn Release>),
            ambiguous_length: flags & (SAW_CONTENT_LENGTH | SAW_TRANSFER_ENCODING)
                == SAW_CONTENT_LENGTH | SAW_TRANSFER_ENCODING,
        }
    }

    fn bytes_arrived(&self, first_bytes: &[u8]) {
        if !self.saw_first_bytes.swap(true, Ordering::Relaxed)
            && first_bytes.starts_with(b"PRI * HTTP/2.0")
        {
            self.is_h2.store(true, Ordering::Relaxed);
        }
        if self.is_h2.load(Ordering::Relaxed) {
            return;
        }
        if self.in_flight.load(Ordering::Relaxed) != 0 {
            return;
        }
        lock(&self.clocks)
            .head_since
            .get_or_insert_with(crate::clock::now);
        let flags = self.head_flags.load(Ordering::Relaxed);
        if flags & HEAD_COMPLETE == 0 {
            self.head_flags
                .store(scan_head(flags, first_bytes), Ordering::Relaxed);
        }
    }

    /// True while the bytes hyper writes can only be its own answer to an unparseable head.
    fn hyper_is_answering_a_bad_head(&self) -> bool {
        !self.is_h2.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
            && lock(&self.clocks).head_since.is_some()
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

/// hyper accepts a head with both Content-Length and Transfer-Encoding (it drops the length
/// and closes the connection afterwards, as RFC 9112 allows) and hides that from us. Such a head
/// is a request smuggling attempt, which we refuse; so the head's header names are looked at as
/// they are read. Only line starts are compared, so the cost is a `memchr` per line.
fn scan_head(mut flags: u8, bytes: &[u8]) -> u8 {
    // A read may begin a line (the previous one ended with a newline), so its start counts too.
    let line_starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', bytes).map(|i| i + 1));
    for start in line_starts {
        let line = &bytes[start..];
        if line.starts_with(b"\r\n") && start > 0 {
            // The empty line: the head ends here; what follows is the body.
            return flags | HEAD_COMPLETE;
        }
        // The first letter first: most lines start with neither name.
        match line.first() {
            Some(b'c' | b'C') if starts_with_ignore_case(line, b"content-length:") => {
                flags |= SAW_CONTENT_LENGTH;
            }
            Some(b't' | b'T') if starts_with_ignore_case(line, b"transfer-encoding:") => {
                flags |= SAW_TRANSFER_ENCODING;
            }
            _ => {}
        }
    }
    flags
}

fn starts_with_ignore_case(text: &[u8], prefix: &[u8]) -> bool {
    text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Held while a request is in flight: from its parsed head to the last byte of its response.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    held: Held,
    ambiguous_length: bool,
}

impl RequestGuard {
    /// The head carried both Content-Length and Transfer-Encoding.
    pub(crate) fn ambiguous_length(&self) -> bool {
        self.ambiguous_length
    }

    /// The request's end, for the response body to keep until its last byte.
    pub(crate) fn into_held(self) -> Held {
        self.held
    }
}

/// A request of the connection is over.
impl Release for ConnState {
    fn release(&self) {
        self.metrics.requests_in_flight.dec();
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            lock(&self.clocks).idle_since = crate::clock::now();
        }
    }
}

/// The connection's watchdog (`connection::watchdog`), polled only when it woke.
pub(crate) type Watchdog = WokenOnly<Pin<Box<dyn Future<Output = ()> + Send>>>;
/// The drain signal: gives back the receiver, kept until the connection ends.
pub(crate) type DrainSignal = WokenOnly<Pin<Box<dyn Future<Output = watch::Receiver<()>> + Send>>>;

/// How a connection learns of the drain: still waiting for it, or already told.
pub(crate) enum Drain {
    Waiting(DrainSignal),
    /// Kept until the connection ends, so that the drain waits for it.
    Told(watch::Receiver<()>),
}

/// Resolves when the connection has been idle for `idle_timeout`, or a request head has taken
/// longer than `header_read_timeout` to arrive; the caller then drops the connection.
pub(crate) async fn watchdog(
    state: Arc<ConnState>,
    idle_timeout: Duration,
    header_read_timeout: Duration,
) {
    loop {
        let now = Instant::now();
        let Clocks {
            idle_since,
            head_since,
        } = *lock(&state.clocks);
        let busy = state.in_flight.load(Ordering::Relaxed) > 0;
        let wake_at = match head_since {
            _ if busy => now + idle_timeout,
            Some(head_since) => head_since + header_read_timeout,
            // Idle: wake in time to notice a head that starts now and then stalls.
            None => (idle_since + idle_timeout).min(now + header_read_timeout),
        };
        if wake_at <= now {
            let expired = !busy
                && match head_since {
                    Some(head_since) => now >= head_since + header_read_timeout,
                    None => now >= idle_since + idle_timeout,
                };
            if expired {
                if head_since.is_some() {
                    state.metrics.header_read_timeouts.inc();
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        tokio::time::sleep_until(wake_at).await;
    }
}

/// The client connection's I/O, watched for the first bytes of each head and for hyper's own
/// error answers.
#[derive(Debug)]
pub(crate) struct ConnIo<T> {
    inner: T,
    state: Arc<ConnState>,
    replacement: Option<Replacement>,
    closing: Option<Linger>,
}

/// A lingering close: after our FIN, what the client still sends is read and dropped for a
/// while, so that closing a socket with unread input (a request body we refused) does not make
/// the kernel send a reset that destroys our answer before the client reads it.
#[derive(Debug)]
struct Linger {
    write_closed: bool,
    drained: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

#[derive(Debug)]
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    claimed: usize,
}

impl<T> ConnIo<T> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            replacement: None,
            closing: None,
        }
    }
}

/// hyper's automatic answer looks exactly like `HTTP/1.1 400 Bad Request\r\n…content-length: 0`.
fn bare_status_of(buf: &[u8]) -> Option<u16> {
    let head = buf.strip_prefix(b"HTTP/1.1 ")?;
    if !buf.ends_with(b"\r\n\r\n") || !contains(buf, b"content-length: 0\r\n") {
        return None;
    }
    let digits = head.get(..3)?;
    let status = std::str::from_utf8(digits).ok()?.parse().ok()?;
    matches!(status, 400 | 414 | 431).then_some(status)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let filled = &buf.filled()[before..];
            if !filled.is_empty() {
                this.state.bytes_arrived(filled);
            }
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_none() && this.state.hyper_is_answering_a_bad_head() {
            if let Some(status) = bare_status_of(buf) {
                let request_id = crate::request_id::new_request_id();
                if let Some(bytes) =
                    raw_error_for_status(status, request_id.to_str().unwrap_or_default())
                {
                    this.replacement = Some(Replacement {
                        bytes,
                        written: 0,
                        claimed: buf.len(),
                    });
                }
            }
        }
        if let Some(replacement) = &mut this.replacement {
            while replacement.written < replacement.bytes.len() {
                let pending = &replacement.bytes[replacement.written..];
                match Pin::new(&mut this.inner).poll_write(cx, pending) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => replacement.written += n,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // Tell hyper its own bytes went out; anything after them goes through unchanged.
            let claimed = replacement.claimed;
            if claimed > 0 {
                replacement.claimed = 0;
                return Poll::Ready(Ok(claimed));
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_none() && this.state.hyper_is_answering_a_bad_head() {
            // The bare answer is small: write it through poll_write so it can be swapped.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map(|b| &b[..])
                .unwrap_or(&[]);
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let linger = this.closing.get_or_insert_with(|| Linger {
            write_closed: false,
            drained: 0,
            deadline: Box::pin(tokio::time::sleep(LINGER_MAX_TIME)),
        });
        if !linger.write_closed {
            match Pin::new(&mut this.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => linger.write_closed = true,
                other => return other,
            }
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    linger.drained += buf.filled().len();
                    if linger.drained > LINGER_MAX_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match linger.deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_with_both_lengths_is_noticed_even_across_reads() {
        let flags = scan_head(0, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n");
        assert_eq!(flags, SAW_CONTENT_LENGTH);
        let flags = scan_head(flags, b"transfer-encoding: chunked\r\n\r\n0\r\n");
        assert_eq!(
            flags,
            SAW_CONTENT_LENGTH | SAW_TRANSFER_ENCODING | HEAD_COMPLETE
        );
        let body_only = scan_head(0, b"GET / HTTP/1.1\r\n\r\nx\r\ncontent-length: 1\r\n");
        assert_eq!(body_only, HEAD_COMPLETE, "the body is not looked at");
    }

    #[test]
    fn recognises_only_hypers_bare_error_answers() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(bare_status_of(bare), Some(400));
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_status_of(big), Some(431));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 80\r\n\r\n";
        assert_eq!(bare_status_of(ours), None);
        let other = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_status_of(other), None);
    }
}
