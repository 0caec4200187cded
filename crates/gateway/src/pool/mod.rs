//! Keep-alive connections to HTTP/1.1 targets: one stack of idle connections per target.
//!
//! hyper-util's pooled client (still used for h2c targets and health checks) finds its pool by
//! hashing the request's scheme and authority, byte by byte through SipHash, at checkout and
//! again at return; it races each checkout against a connect, and spawns a task per request to
//! wait until the connection is free again. Here the target's pool is found once, when the
//! config is compiled; a request takes the most recently returned connection that is still
//! open (or opens one), and the connection goes back as soon as it is free: at the answer's
//! head when the whole answer came with it, otherwise when the response body is done — the
//! gateway's response body knows that moment. Decision 0010 has the measurements.
//!
//! A request whose body the gateway holds whole (most: none, or one read before the steps; at
//! most 64 KiB) is exchanged by the gateway's own client side ([`owned`]: the head written in
//! one write with the body, the answer read by `sekisho-h1`), in the request's own future;
//! one with a streamed or larger body goes through hyper's client connection (a task per
//! connection). Both kinds wait in the same idle stack; an owned connection taken for a
//! streamed body becomes hyper's, and at the connection bound an idle one of hyper's is closed
//! to make room for an owned one. A written request whose reused connection fails before any
//! answer goes out again on another connection when its method is idempotent.
//!
//! What hyper-util did that is kept: a request sent on a reused connection that the target had
//! closed meanwhile (hyper hands the unsent request back) goes out again on another connection;
//! at most `pool_max_idle_per_target` connections wait per target, the oldest closed first; an
//! idle connection is closed after `pool_idle_timeout` (checked at checkout, and by a sweep).
//!
//! Added: at most `max_connections_per_target` connections are open to a target at once (a
//! connection counts from its connect until it closes: its task ends, or the owned one is
//! dropped). A request that finds none free and
//! the bound reached waits for one to come back — or to close, freeing a slot — rather than
//! opening another; the wait is bounded by the request's own deadline (the route's timeout,
//! applied around the call). A burst then meets the target with the bound's worth of
//! connections, not one per waiting request.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response, Uri};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_service::Service;

use crate::body::{RequestBody, UpstreamBody};
use crate::interim::InterimSink;
use crate::sync::lock;

mod idle;
mod owned;

use idle::{IdleStacks, Pooled, Stacks};
use owned::{Conn, Failure};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a call to a target failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No connection could be made (nothing was sent).
    Connect(BoxError),
    /// The exchange on the connection failed.
    Request(BoxError),
}

impl CallError {
    /// Whether no connection could be made.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(error) => write!(f, "connect failed: {error}"),
            Self::Request(error) => write!(f, "request failed: {error}"),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(error) | Self::Request(error) => Some(error.as_ref()),
        }
    }
}

/// Connections to HTTP/1.1 targets made with one set of settings; the pools of its targets.
#[derive(Debug)]
pub(crate) struct Http1Client {
    connector: HttpConnector,
    /// Idle connections kept per target and event loop, at most.
    max_idle: usize,
    /// Event loops, each with its own idle connections per target.
    loops: usize,
    idle_timeout: Duration,
    /// Pools by target, kept across reloads while the settings stay.
    pools: Mutex<HashMap<Authority, Arc<Http1Pool>>>,
    /// Connections open per target at most; 0: no bound.
    max_open: usize,
}

impl Http1Client {
    /// A client whose connections are made by `connector`; a sweep closes idle connections
    /// past `idle_timeout` while the client lives (when built inside a tokio runtime).
    pub(crate) fn new(
        connector: HttpConnector,
        max_idle: usize,
        idle_timeout: Duration,
        max_open: usize,
        loops: usize,
    ) -> Arc<Self> {
        let client = Arc::new(Self {
            connector,
            max_idle,
            loops: loops.max(1),
            idle_timeout,
            max_open,
            pools: Mutex::new(HashMap::new()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&client), idle_timeout));
        }
        client
    }

    /// The pool of the target at `authority` (the same one for every generation of the config).
    pub(crate) fn pool_for(&self, authority: &Authority) -> Arc<Http1Pool> {
        let mut pools = lock(&self.pools);
        Arc::clone(pools.entry(authority.clone()).or_insert_with(|| {
            Arc::new(Http1Pool {
                target: Uri::builder()
                    .scheme("http")
                    .authority(authority.clone())
                    .path_and_query("/")
                    .build()
                    .unwrap_or_default(),
                connector: self.connector.clone(),
                idle: IdleStacks::new(self.loops, self.max_idle, self.idle_timeout),
                slots: Arc::new(Slots {
                    max: if self.max_open == 0 {
                        usize::MAX
                    } else {
                        self.max_open
                    },
                    open: AtomicUsize::new(0),
                    freed: Notify::new(),
                }),
            })
        }))
    }
}

/// Closes connections idle past `idle_timeout`, until the client is gone.
async fn sweep(client: Weak<Http1Client>, idle_timeout: Duration) {
    // Every half timeout: an idle connection lives at most 1.5 × the timeout without traffic.
    let mut ticks = tokio::time::interval((idle_timeout / 2).max(Duration::from_secs(1)));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(client) = client.upgrade() else {
            return;
        };
        let pools: Vec<Arc<Http1Pool>> = lock(&client.pools).values().cloned().collect();
        let now = Instant::now();
        for pool in pools {
            pool.idle.expire(now);
        }
    }
}

/// The idle connections of one target.
pub(crate) struct Http1Pool {
    /// `http://authority/`, for the connector.
    target: Uri,
    connector: HttpConnector,
    /// Per event loop (`idle.rs`).
    idle: IdleStacks,
    /// The connections open, against the bound.
    slots: Arc<Slots>,
}

/// The connections open to a target, and a wake-up when one comes back or closes.
#[derive(Debug)]
struct Slots {
    max: usize,
    open: AtomicUsize,
    freed: Notify,
}

impl Slots {
    /// A slot for a new connection, if the bound allows: held by the connection's task for its
    /// life, given back when dropped (a connect that failed or was cancelled included).
    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }
}

/// One open (or opening) connection's place under the bound.
#[derive(Debug)]
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Pool")
            .field("target", &self.target)
            .field("idle", &self.idle.len())
            .finish()
    }
}

/// The largest body the owned client side writes (in one write with the head, then reads the
/// answer): a larger one goes through hyper's client, which reads an early answer while it is
/// still sending (a target refusing a large upload mid-way must not turn its 413 into a 504).
const WRITTEN_WHOLE_MAX: usize = 64 * 1024;

/// Whether a request with `body` is exchanged by the owned client side: its body held whole, and
/// small.
pub(crate) fn written_whole(body: &RequestBody) -> bool {
    body.whole_len().is_some_and(|len| len <= WRITTEN_WHOLE_MAX)
}

/// A request's head as the owned client side writes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OwnedHead<'a> {
    pub method: &'a Method,
    /// Origin-form.
    pub target: &'a http::uri::PathAndQuery,
    /// Hop-by-hop fields already out.
    pub headers: &'a http::HeaderMap,
    /// Head lines (`name: value\r\n`) written after the fields.
    pub late_fields: [&'a [u8]; 2],
    /// `X-Request-Id`, written after the first of the late fields, when it is not in `headers`.
    pub request_id: Option<&'a [u8]>,
    /// The answer's fields may stay as read (`sekisho_h1::RawFields`, carried by its body):
    /// nothing on the way down reads them, and its writer writes them through.
    pub raw_answer: bool,
}

/// Whether a request may go out again after it was written on a connection that then failed
/// before any answer (RFC 9110 §9.2.2: idempotent methods).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Http1Pool {
    /// Sends `request` (origin-form target, a streamed body) through hyper's client, on an idle
    /// connection or a new one; the answer comes with the connection's [`Lease`] while the
    /// connection is still busy with it, to be kept until its body is done.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
        now: Instant,
        interim: Option<&InterimSink>,
    ) -> Result<(Response<UpstreamBody>, Option<Lease>), CallError> {
        if let Some(sink) = interim {
            sink.attach(&mut request);
        }
        let (response, lease) = self.send_hyper(request, now).await?;
        Ok((response.map(UpstreamBody::Hyper), lease))
    }

    /// Sends a request whose body the gateway holds whole ([`written_whole`]) on an owned
    /// connection: `head` as it is written, `body` taken once a connection is in hand (a failed
    /// connect leaves it to the claim, for another target).
    pub(crate) async fn send_whole(
        self: &Arc<Self>,
        head: OwnedHead<'_>,
        body: &mut RequestBody,
        now: Instant,
        interim: Option<&InterimSink>,
    ) -> Result<Response<UpstreamBody>, CallError> {
        let resendable = idempotent(head.method);
        let mut payload: Option<Bytes> = None;
        loop {
            let conn = self.owned_conn(now).await?;
            let bytes = payload.get_or_insert_with(|| body.take_whole().unwrap_or_default());
            let retry_unsent = conn.is_reused();
            match owned::exchange(conn, &head, bytes, interim, self).await {
                Ok(response) => return Ok(response),
                // Written (perhaps) on a connection the target had closed: again on another
                // one, when the method allows it.
                Err(Failure::Stale(_)) if retry_unsent && resendable => continue,
                Err(Failure::Stale(error)) => return Err(CallError::Request(error.into())),
                Err(Failure::Broken(error)) => return Err(CallError::Request(error)),
            }
        }
    }

    /// An idle owned connection that is still open, a new one, or — the bound reached — the
    /// first one to come back or free a slot.
    async fn owned_conn(self: &Arc<Self>, now: Instant) -> Result<Conn, CallError> {
        loop {
            let freed = self.slots.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(conn) = self.idle.checkout_owned(now, Stacks::Own) {
                return Ok(conn);
            }
            if let Some(slot) = self.slots.take() {
                // Boxed: rare on a warm pool (see `send_hyper`).
                let io = Box::pin(self.open()).await?;
                return Ok(Conn::new(io, slot));
            }
            if let Some(conn) = self.idle.checkout_owned(now, Stacks::Others) {
                return Ok(conn);
            }
            // At the bound: an idle connection of hyper's is closed to free its slot (its task
            // ends and gives the slot back), rather than waiting beside it.
            self.idle.close_one_hyper();
            freed.await;
        }
    }

    /// Sends `request` on a connection driven by hyper's client.
    async fn send_hyper(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
        now: Instant,
    ) -> Result<(Response<hyper::body::Incoming>, Option<Lease>), CallError> {
        let mut sender = 'found: loop {
            // Interest in a freed connection taken before looking, so none is missed between
            // the look and the wait.
            let freed = self.slots.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let mut stacks = Stacks::Own;
            loop {
                let Some(pooled) = self.idle.checkout(now, stacks) else {
                    if stacks == Stacks::Others {
                        break;
                    }
                    if let Some(slot) = self.slots.take() {
                        // Boxed: a new connection is rare on a warm pool, and its connect and
                        // handshake would otherwise make every request's future (and each one
                        // above it) larger.
                        break 'found Box::pin(self.connect(slot)).await?;
                    }
                    // The bound reached: another event loop's idle connection, if any.
                    stacks = Stacks::Others;
                    continue;
                };
                let mut sender = match pooled {
                    Pooled::Hyper(sender) => sender,
                    // An owned connection becomes hyper's: sent on like a new one.
                    Pooled::Owned(conn) => {
                        let (io, slot) = conn.into_parts();
                        break 'found Box::pin(hyper_conn(io, slot)).await?;
                    }
                };
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok((response, self.lease(sender))),
                    Err(mut failed) => match failed.take_message() {
                        // Closed by the target before the request went out: another connection.
                        Some(unsent) => request = unsent,
                        None => return Err(CallError::Request(failed.into_error().into())),
                    },
                }
            }
            // As many connections open as the bound allows, all busy: wait for one to come
            // back or to close (the caller's deadline bounds the wait).
            freed.await;
        };
        match sender.send_request(request).await {
            Ok(response) => Ok((response, self.lease(sender))),
            Err(error) => Err(CallError::Request(error.into())),
        }
    }

    /// Idle connections that are still open, over every event loop.
    pub(crate) fn idle(&self) -> usize {
        self.idle.open()
    }

    /// The connection's lease for the answer's body; none when the connection is free already.
    fn lease(self: &Arc<Self>, sender: SendRequest<RequestBody>) -> Option<Lease> {
        // The whole answer may have arrived with its head (a small body): its end is then
        // waiting in the body's channel, and the connection can take the next request now,
        // not only once this body has been passed on downstream.
        if sender.is_ready() {
            self.put(sender);
            return None;
        }
        Some(Lease {
            pool: Arc::clone(self),
            sender: Some(sender),
        })
    }

    fn put(&self, sender: SendRequest<RequestBody>) {
        self.put_idle(Pooled::Hyper(sender));
    }

    /// An owned connection free for the next request.
    fn put_owned(&self, conn: Conn) {
        self.put_idle(Pooled::Owned(conn));
    }

    fn put_idle(&self, conn: Pooled) {
        if self.idle.put(conn) {
            self.slots.freed.notify_one();
        }
    }

    /// A new connection to the target (its caller holds the slot it counts under).
    async fn open(&self) -> Result<TcpStream, CallError> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(|error| CallError::Connect(error.into()))?;
        Ok(io.into_inner())
    }

    async fn connect(&self, slot: Slot) -> Result<SendRequest<RequestBody>, CallError> {
        let io = self.open().await?;
        hyper_conn(io, slot).await
    }
}

/// Hands `io` to hyper's client: its connection runs as a task holding `slot`.
async fn hyper_conn(io: TcpStream, slot: Slot) -> Result<SendRequest<RequestBody>, CallError> {
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|error| CallError::Connect(error.into()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended");
        }
        drop(slot);
    });
    Ok(sender)
}

/// A connection lent to one exchange: it goes back to its pool when dropped, if it can carry
/// another request (the answer was read to its end); otherwise it is closed.
pub(crate) struct Lease {
    pool: Arc<Http1Pool>,
    sender: Option<SendRequest<RequestBody>>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("pool", &self.pool.target)
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut sender) = self.sender.take() else {
            return;
        };
        if sender.is_ready() {
            self.pool.put(sender);
            return;
        }
        if sender.is_closed() {
            return;
        }
        // Not free yet: the end of the answer is still on its way through the connection's
        // task (or the answer was left unread, and the connection will close). Wait apart.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::clone(&self.pool);
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(sender);
                }
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use crate::worker;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A target answering every request on a connection with `200 ok`; it counts connections.
    async fn target() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut seen = Vec::new();
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    fn pool(address: std::net::SocketAddr, max_open: usize) -> Arc<Http1Pool> {
        let client = Http1Client::new(
            HttpConnector::new(),
            8,
            Duration::from_secs(60),
            max_open,
            2,
        );
        client.pool_for(&Authority::try_from(address.to_string()).unwrap())
    }

    /// One GET through the owned client side, its body read to the end.
    async fn get(pool: &Arc<Http1Pool>) -> u16 {
        let headers = http::HeaderMap::new();
        let target = http::uri::PathAndQuery::from_static("/");
        let head = OwnedHead {
            method: &Method::GET,
            target: &target,
            headers: &headers,
            late_fields: [b"host: t\r\n", b""],
            request_id: None,
            raw_answer: false,
        };
        let (mut body, _claim) = RequestBody::none(0);
        let answer = pool
            .send_whole(head, &mut body, Instant::now(), None)
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let _ = answer.into_body().collect().await.unwrap();
        status
    }

    /// `get` on a thread of its own marked as worker `index`'s event loop, with a runtime of its
    /// own; given up after 10 s.
    fn get_on_worker(pool: &Arc<Http1Pool>, index: usize) -> Option<u16> {
        let pool = Arc::clone(pool);
        std::thread::spawn(move || {
            worker::enter(index);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), get(&pool))
                    .await
                    .ok()
            })
        })
        .join()
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_event_loop_keeps_its_own_idle_connections() {
        let (address, accepted) = target().await;
        let pool = pool(address, 0);
        assert_eq!(get(&pool).await, 200);
        assert_eq!(pool.idle(), 1);
        // Worker 1 leaves worker 0's idle connection alone and opens one of its own, which then
        // waits in its own stack.
        let other = Arc::clone(&pool);
        let status = tokio::task::spawn_blocking(move || get_on_worker(&other, 1))
            .await
            .unwrap();
        assert_eq!(status, Some(200));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle(), 2);
        assert_eq!(get(&pool).await, 200);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "worker 0 took its own again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_bound_a_loop_takes_another_loops_idle_connection() {
        let (address, accepted) = target().await;
        let pool = pool(address, 1);
        assert_eq!(get(&pool).await, 200);
        // The bound (one connection) reached, worker 1 would wait for ever for a slot: it takes
        // worker 0's idle connection instead.
        let other = Arc::clone(&pool);
        let status = tokio::task::spawn_blocking(move || get_on_worker(&other, 1))
            .await
            .unwrap();
        assert_eq!(status, Some(200), "worker 1 waited for a slot");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
