//! The connection loop: a client's requests, one after the other, each sent on a pooled
//! upstream connection and its response streamed back.
//!
//! Per exchange: the request head is read and edited (`head::read_request`), written with the
//! start of its body in one vectored write, the rest of the body relayed by its framing; the
//! response head is read and edited the same way and its body relayed. Nothing is re-framed:
//! a chunked body goes through as it came, `ChunkedScanner` only finds its end.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::chunked::ChunkedScanner;
use crate::head::{self, ClientFacts, Edits, Framing, Refusal, RequestHead, MAX_HEAD};
use crate::ids::RequestIds;
use crate::io::{read_more, write_all, TimerMode, Wait, Watch};

/// The proxy's time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte of a request head to its end (slowloris).
    pub header: Duration,
    /// A keep-alive connection waiting for its next request.
    pub idle: Duration,
    /// Each wait for the upstream's response head or body bytes, and for a client's body bytes.
    pub read: Duration,
    /// Each wait for a socket to take more bytes.
    pub write: Duration,
    /// How reads are timed (`H1_TIMERS=per-wait` or `ticks` for the binary).
    pub mode: TimerMode,
    /// The tick of `TimerMode::Ticks`: read limits hold to within one tick.
    pub tick: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            mode: TimerMode::Ticks,
            tick: Duration::from_secs(1),
        }
    }
}

/// What every connection of the runtime shares: the upstream and its idle connections.
#[derive(Debug)]
pub struct Shared {
    upstream: SocketAddr,
    idle: Mutex<Vec<TcpStream>>,
    max_idle: usize,
    timeouts: Timeouts,
    /// Answers every request with [`REFUSAL`] instead of forwarding it (`H1_REFUSE=1`): the
    /// cheapest refusal an owned codec gives, the floor sekisho's refusals are measured against
    /// (`scripts/bench-refusal`, issue 14).
    pub refuse: bool,
}

/// The refusal of `H1_REFUSE=1`: sekisho's shed answer, its size and shape (a `date` of
/// today's length, a 32-character request id).
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nx-request-id: 0123456789abcdef0123456789abcdef\r\ndate: Fri, 04 Dec 2026 13:00:00 GMT\r\ncontent-length: 164\r\n\r\n{\"status\":\"error\",\"error\":{\"code\":\"OVERLOADED\",\"message\":\"route `bench` is at its concurrency limit (1 in flight)\",\"request_id\":\"0123456789abcdef0123456789abcdef\"}}";

impl Shared {
    pub fn new(upstream: SocketAddr, timeouts: Timeouts) -> Arc<Self> {
        Arc::new(Self {
            upstream,
            idle: Mutex::new(Vec::new()),
            max_idle: 1024,
            timeouts,
            refuse: false,
        })
    }

    /// An idle connection (most recently used first), else a new one.
    async fn checkout(&self) -> io::Result<UpstreamConn> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match pooled {
            Some(stream) => Ok(UpstreamConn {
                stream,
                reused: true,
            }),
            None => self.connect().await,
        }
    }

    async fn connect(&self) -> io::Result<UpstreamConn> {
        let stream = tokio::time::timeout(self.timeouts.read, TcpStream::connect(self.upstream))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        Ok(UpstreamConn {
            stream,
            reused: false,
        })
    }

    fn checkin(&self, conn: UpstreamConn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(conn.stream);
        }
    }
}

#[derive(Debug)]
struct UpstreamConn {
    stream: TcpStream,
    /// Came from the pool: it may have been closed by the upstream meanwhile.
    reused: bool,
}

/// Accepts connections forever, a task each.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection::new(stream, peer, Arc::clone(&shared));
        tokio::spawn(connection.run());
    }
}

/// How a body's end is found while relaying it.
#[derive(Debug)]
enum BodyCursor {
    Length(u64),
    Chunked(ChunkedScanner),
    UntilClose,
    Done,
}

impl BodyCursor {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Self::Done,
            Framing::Length(length) => Self::Length(length),
            Framing::Chunked => Self::Chunked(ChunkedScanner::new()),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    /// How many of `available`'s bytes belong to the body.
    fn take(&mut self, available: &[u8]) -> io::Result<usize> {
        match self {
            Self::Done => Ok(0),
            Self::Length(remaining) => {
                let taken = (*remaining).min(available.len() as u64);
                *remaining -= taken;
                if *remaining == 0 {
                    *self = Self::Done;
                }
                Ok(taken as usize)
            }
            Self::Chunked(scanner) => {
                let taken = scanner.scan(available).map_err(|error| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("chunked: {error:?}"))
                })?;
                if scanner.is_done() {
                    *self = Self::Done;
                }
                Ok(taken)
            }
            Self::UntilClose => Ok(available.len()),
        }
    }

    fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }
}

/// Why an exchange ended the connection.
#[derive(Debug)]
enum Stop {
    /// The client closed, timed out or broke the protocol: close without an answer.
    Quiet,
    /// Answer this status (if nothing was sent yet) and close.
    Answer(u16),
}

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Self {
        Stop::Quiet
    }
}

/// One client connection and what its exchanges reuse.
struct Connection {
    client: TcpStream,
    shared: Arc<Shared>,
    facts: ClientFacts,
    ids: RequestIds,
    request_buf: BytesMut,
    response_buf: BytesMut,
    edits: Edits,
    watch: Watch,
}

impl Connection {
    fn new(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> Self {
        Self {
            client,
            facts: ClientFacts::new(peer.ip()),
            ids: RequestIds::new(),
            request_buf: BytesMut::with_capacity(8 * 1024),
            response_buf: BytesMut::with_capacity(8 * 1024),
            edits: Edits::default(),
            watch: Watch::new(shared.timeouts.mode, shared.timeouts.tick),
            shared,
        }
    }

    async fn run(mut self) {
        loop {
            match self.exchange().await {
                Ok(true) => continue,
                Ok(false) | Err(Stop::Quiet) => return,
                Err(Stop::Answer(status)) => {
                    let answer = canned_answer(status);
                    let wait = Wait::For(self.shared.timeouts.write);
                    let _ = write_all(&self.client, answer, wait).await;
                    return;
                }
            }
        }
    }

    /// One request and its response: whether the connection stays open.
    async fn exchange(&mut self) -> Result<bool, Stop> {
        let Some(request) = self.read_request_head().await? else {
            return Ok(false);
        };
        let timeouts = self.shared.timeouts;
        let mut request_body = BodyCursor::new(request.framing);
        let body_start = request_body
            .take(&self.request_buf[request.head_len..])
            .map_err(|_| Stop::Answer(400))?;
        if request.expect_continue && !request_body.is_done() && body_start == 0 {
            let wait = Wait::For(timeouts.write);
            write_all(&self.client, b"HTTP/1.1 100 Continue\r\n\r\n", wait).await?;
        }
        let sent_whole = request_body.is_done();
        let consumed = request.head_len + body_start;
        if self.shared.refuse && sent_whole {
            self.request_buf.advance(consumed);
            write_all(&self.client, REFUSAL, Wait::For(timeouts.write)).await?;
            return Ok(request.keep_alive);
        }

        // A pooled connection the upstream closed meanwhile fails at once; the request is sent
        // again on a new connection when it was sent whole (nothing of it was lost).
        let mut upstream = self
            .shared
            .checkout()
            .await
            .map_err(|_| Stop::Answer(502))?;
        let response = loop {
            match self
                .send_request(&mut upstream, &request, consumed, &mut request_body)
                .await
            {
                Ok(response) => break response,
                Err(Sent::Stale) if upstream.reused && sent_whole => {
                    upstream = self.shared.connect().await.map_err(|_| Stop::Answer(502))?;
                }
                Err(Sent::Stale | Sent::Failed) => return Err(Stop::Answer(502)),
                Err(Sent::TimedOut) => return Err(Stop::Answer(504)),
                Err(Sent::Refused(refusal)) => return Err(Stop::Answer(refusal.status)),
                Err(Sent::ClientGone) => return Err(Stop::Quiet),
            }
        };
        if sent_whole {
            self.request_buf.advance(consumed);
        }

        // The response head was read; its body goes to the client as it comes.
        let mut response_body = BodyCursor::new(response.framing);
        let response_start = response_body
            .take(&self.response_buf[response.head_len..])
            .map_err(|_| Stop::Quiet)?;
        send_head(
            &self.client,
            &self.response_buf,
            &self.edits,
            response.head_len..response.head_len + response_start,
            Wait::For(timeouts.write),
        )
        .await?;
        self.response_buf
            .advance(response.head_len + response_start);
        relay(
            &mut upstream.stream,
            &mut self.response_buf,
            &self.client,
            &mut response_body,
            &mut self.watch,
            timeouts,
        )
        .await?;

        // Reused only when the upstream said nothing more than this response.
        if response.upstream_keep_alive && self.response_buf.is_empty() {
            self.shared.checkin(upstream);
        }
        self.response_buf.clear();
        Ok(response.client_keep_alive)
    }

    /// Reads the next request head: `None` when the client closed between requests.
    async fn read_request_head(&mut self) -> Result<Option<RequestHead>, Stop> {
        let mut deadline = None;
        loop {
            if !self.request_buf.is_empty() {
                let parsed = head::read_request(
                    &self.request_buf,
                    &self.facts,
                    &mut self.ids,
                    &mut self.edits,
                );
                match parsed {
                    Ok(Some(request)) => return Ok(Some(request)),
                    Ok(None) if self.request_buf.len() >= MAX_HEAD => {
                        return Err(Stop::Answer(431))
                    }
                    Ok(None) => {}
                    Err(Refusal { status, .. }) => return Err(Stop::Answer(status)),
                }
            }
            // Waiting for a new request is the idle time; once it has begun, the whole head
            // must arrive in `header` (a client sending a byte now and then is cut).
            let timeouts = self.shared.timeouts;
            let was_empty = self.request_buf.is_empty();
            let wait = if was_empty {
                Wait::For(timeouts.idle)
            } else if self.watch.mode() == TimerMode::Ticks {
                Wait::For(timeouts.header)
            } else {
                Wait::Until(*deadline.get_or_insert_with(|| Instant::now() + timeouts.header))
            };
            let read = read_more(
                &mut self.client,
                &mut self.request_buf,
                &mut self.watch,
                wait,
                false,
            )
            .await?;
            if read == 0 {
                return if was_empty {
                    Ok(None)
                } else {
                    Err(Stop::Quiet)
                };
            }
            if was_empty {
                // A request begins: its head has `header` from here, whatever the idle time was.
                self.watch.progress();
            }
        }
    }

    /// Sends the request (head, then body) and reads the final response head.
    async fn send_request(
        &mut self,
        upstream: &mut UpstreamConn,
        request: &RequestHead,
        consumed: usize,
        body: &mut BodyCursor,
    ) -> Result<head::ResponseHead, Sent> {
        let timeouts = self.shared.timeouts;
        send_head(
            &upstream.stream,
            &self.request_buf,
            &self.edits,
            request.head_len..consumed,
            Wait::For(timeouts.write),
        )
        .await
        .map_err(|_| Sent::Stale)?;
        if !body.is_done() {
            self.request_buf.advance(consumed);
            relay(
                &mut self.client,
                &mut self.request_buf,
                &upstream.stream,
                body,
                &mut self.watch,
                timeouts,
            )
            .await
            .map_err(|_| Sent::ClientGone)?;
        }

        self.response_buf.clear();
        // Only a connection that said nothing at all is stale (an interim answer may already
        // have gone to the client: then the request is not sent again).
        let mut heard = false;
        loop {
            let wait = Wait::For(timeouts.read);
            let read = read_more(
                &mut upstream.stream,
                &mut self.response_buf,
                &mut self.watch,
                wait,
                true,
            );
            match read.await {
                Ok(0) if !heard => return Err(Sent::Stale),
                Ok(0) => return Err(Sent::Failed),
                Ok(_) => heard = true,
                Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                    return Err(Sent::TimedOut)
                }
                Err(_) if !heard => return Err(Sent::Stale),
                Err(_) => return Err(Sent::Failed),
            }
            // Interim answers (100 Continue, 103 Early Hints) go to the client as they are.
            while let Some(response) =
                head::read_response(&self.response_buf, request, &mut self.edits)
                    .map_err(Sent::Refused)?
            {
                if !response.interim {
                    return Ok(response);
                }
                write_all(&self.client, &self.response_buf[..response.head_len], wait)
                    .await
                    .map_err(|_| Sent::ClientGone)?;
                self.response_buf.advance(response.head_len);
            }
            if self.response_buf.len() >= MAX_HEAD {
                return Err(Sent::Refused(Refusal {
                    status: 502,
                    reason: "response head too large",
                }));
            }
        }
    }
}

/// How sending a request failed.
#[derive(Debug)]
enum Sent {
    /// The upstream closed or reset before answering anything.
    Stale,
    /// The upstream broke off in the middle of its answer.
    Failed,
    TimedOut,
    Refused(Refusal),
    /// The client went away (or broke its body's framing) while its body was relayed.
    ClientGone,
}

/// Writes a forwarded head — the kept ranges of `buf`, then the added lines — and the start of
/// the body (`body`, a range of `buf`) in one `writev`. Only when the socket does not take it
/// all is what is left copied out and awaited: the slices never live in the task's state.
async fn send_head(
    stream: &TcpStream,
    buf: &[u8],
    edits: &Edits,
    body: Range<usize>,
    wait: Wait,
) -> io::Result<()> {
    match write_gathered(stream, buf, edits, body)? {
        None => Ok(()),
        Some(rest) => write_all(stream, &rest, wait).await,
    }
}

/// Slices of one vectored head write: a few kept ranges (one when no line is dropped), the
/// added lines, the body's start. A head cut in more ranges is copied into one buffer instead.
const SLICES: usize = 8;

/// The synchronous part of `send_head`: what the socket did not take, if anything.
fn write_gathered(
    stream: &TcpStream,
    buf: &[u8],
    edits: &Edits,
    body: Range<usize>,
) -> io::Result<Option<Vec<u8>>> {
    if edits.kept.len() + 2 > SLICES {
        let mut whole = Vec::with_capacity(buf.len() + edits.added.len());
        for range in &edits.kept {
            whole.extend_from_slice(&buf[range.clone()]);
        }
        whole.extend_from_slice(&edits.added);
        whole.extend_from_slice(&buf[body]);
        return Ok(Some(whole));
    }
    let mut slices = [IoSlice::new(&[]); SLICES];
    let mut count = 0;
    for range in &edits.kept {
        slices[count] = IoSlice::new(&buf[range.clone()]);
        count += 1;
    }
    slices[count] = IoSlice::new(&edits.added);
    count += 1;
    if !body.is_empty() {
        slices[count] = IoSlice::new(&buf[body]);
        count += 1;
    }
    let total: usize = slices[..count].iter().map(|slice| slice.len()).sum();
    let written = match stream.try_write_vectored(&slices[..count]) {
        Ok(written) => written,
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
        Err(error) => return Err(error),
    };
    if written == total {
        return Ok(None);
    }
    let mut rest_slices = &mut slices[..count];
    IoSlice::advance_slices(&mut rest_slices, written);
    let mut rest = Vec::with_capacity(total - written);
    for slice in rest_slices.iter() {
        rest.extend_from_slice(slice);
    }
    Ok(Some(rest))
}

/// Relays the rest of a body from `from` to `to`, through `buf` (which may start with some of
/// it); what follows the body stays in `buf`.
async fn relay(
    from: &mut TcpStream,
    buf: &mut BytesMut,
    to: &TcpStream,
    body: &mut BodyCursor,
    watch: &mut Watch,
    timeouts: Timeouts,
) -> io::Result<()> {
    while !body.is_done() {
        if buf.is_empty() {
            buf.clear();
            if read_more(from, buf, watch, Wait::For(timeouts.read), true).await? == 0 {
                return match body {
                    BodyCursor::UntilClose => Ok(()),
                    _ => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
        let taken = body.take(buf)?;
        write_all(to, &buf[..taken], Wait::For(timeouts.write)).await?;
        buf.advance(taken);
    }
    Ok(())
}

/// The answers this hop makes itself; each closes the connection.
fn canned_answer(status: u16) -> &'static [u8] {
    match status {
        400 => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        417 => b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        431 => b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        504 => b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        _ => b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    }
}
