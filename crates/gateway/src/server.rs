//! The traffic listener: accept, TLS, one task per connection, graceful drain.
//!
//! Connections are bounded by `server.max_connections`: beyond it the accept loop waits, so
//! further clients queue in the kernel's backlog rather than in our memory. The same holds while
//! the gateway itself is overloaded (`[server.overload]`: its event loop runs further behind
//! than `max_loop_delay`): the loop does not accept until it has caught up. On shutdown the loop
//! stops accepting, asks every connection to finish its requests (hyper's graceful shutdown:
//! HTTP/1 closes after the current response, HTTP/2 sends GOAWAY) and waits up to the drain
//! timeout.
//!
//! A connection's task polls its watchdog and the drain signal only when they woke it
//! ([`WokenOnly`]), not each time the connection's I/O does.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::connection::{watchdog, ConnIo, ConnState};
use crate::proxy::{handle, ClientInfo};
use crate::runtime::ListenerSettings;
use crate::state::GatewayState;
use crate::woken::WokenOnly;

/// The listen backlog of a listener bound with `reuse_port` (what `TcpListener::bind` uses).
const LISTEN_BACKLOG: u32 = 1024;

/// A bound traffic listener, not yet serving.
#[derive(Debug)]
pub struct TrafficListener {
    listener: TcpListener,
}

impl TrafficListener {
    /// Binds `address` ("host:port"; port 0 picks one), with `SO_REUSEPORT` when `reuse_port`
    /// (other processes may then bind it too; the kernel spreads connections over them).
    pub(crate) async fn bind(address: &str, reuse_port: bool) -> io::Result<Self> {
        if !reuse_port {
            return Ok(Self {
                listener: TcpListener::bind(address).await?,
            });
        }
        let mut last_error = None;
        for candidate in tokio::net::lookup_host(address).await? {
            let socket = if candidate.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            match socket
                .bind(candidate)
                .and_then(|()| socket.listen(LISTEN_BACKLOG))
            {
                Ok(listener) => return Ok(Self { listener }),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address names no socket address",
            )
        }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

fn connection_builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's limit is a hard backstop above ours: the gateway itself answers 431 with JSON for
    // heads between `max_header_bytes` and this.
    let hard_limit = (settings.max_header_bytes as usize)
        .saturating_mul(2)
        .max(16 * 1024);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(hard_limit.max(8192));
    // Beyond the count hyper refuses the head (431, which `ConnIo` turns into the contract's
    // JSON). Its own default is left alone when asked for: any explicit count makes hyper build
    // its two header arrays element by element on every request (on the heap above 100),
    // ≈ 3,000 instructions and two allocations at 256 (benchmarks.md, session 8).
    if settings.max_header_count != sekisho_config::DEFAULT_MAX_HEADER_COUNT {
        builder
            .http1()
            .max_headers(settings.max_header_count as usize);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(hard_limit as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

pub(crate) async fn serve(
    shared: Arc<GatewayState>,
    listener: TrafficListener,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    // Each connection holds a receiver until it ends: the drain is over when none is left.
    let (drain, _) = watch::channel(());
    let permits = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    'accepting: loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // The gateway itself overloaded (`[server.overload]`): new clients wait in the listen
        // backlog, at no cost to the loop, until it has caught up.
        while shared.lag.overloaded() {
            tokio::select! {
                () = &mut shutdown => break 'accepting,
                () = tokio::time::sleep(crate::lag::PERIOD) => {}
            }
        }
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let watcher = drain.subscribe();
        tokio::spawn(async move {
            serve_connection(shared, stream, remote, watcher).await;
            drop(permit);
        });
    }
    drop(listener);
    shared.set_draining();
    let drain_timeout = shared.runtime.load().config.server.drain_timeout.0;
    tracing::info!(?drain_timeout, "stopped accepting; draining connections");
    let connections_done = async {
        let _ = drain.send(());
        drain.closed().await;
    };
    match tokio::time::timeout(drain_timeout, connections_done).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("drain timeout passed with connections still open"),
    }
}

async fn serve_connection(
    shared: Arc<GatewayState>,
    stream: TcpStream,
    remote: SocketAddr,
    watcher: watch::Receiver<()>,
) {
    let runtime = shared.runtime.load_full();
    let settings = runtime.listener.clone();
    let builder = connection_builder(&settings);
    match runtime.tls.clone() {
        None => {
            let state = ConnState::new(Arc::clone(&shared.metrics), false);
            let io = TokioIo::new(ConnIo::new(stream, Arc::clone(&state)));
            let client = Arc::new(ClientInfo::new(remote, false));
            drive(shared, builder, io, state, client, settings, watcher).await;
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)).await;
            let tls_stream = match handshake {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %remote, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let is_h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let state = ConnState::new(Arc::clone(&shared.metrics), is_h2);
            let io = TokioIo::new(ConnIo::new(tls_stream, Arc::clone(&state)));
            let client = Arc::new(ClientInfo::new(remote, true));
            drive(shared, builder, io, state, client, settings, watcher).await;
        }
    }
}

/// Serves one connection's requests until it ends, is closed by its watchdog, or drains.
async fn drive<I>(
    shared: Arc<GatewayState>,
    builder: auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    state: Arc<ConnState>,
    client: Arc<ClientInfo>,
    settings: ListenerSettings,
    watcher: watch::Receiver<()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remote = client.remote;
    let service_state = Arc::clone(&state);
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let client = Arc::clone(&client);
        let guard = service_state.request_started();
        let ambiguous_length = guard.ambiguous_length();
        // Not boxed: hyper's HTTP/1 dispatcher keeps the request future in a box of its own,
        // made once per connection (a box here cost an allocation per request).
        async move {
            let mut response = handle(&shared, client, request, ambiguous_length).await;
            response.body_mut().hold(guard.into_held());
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = builder.serve_connection(io, service).into_owned();
    tokio::pin!(connection);
    let mut watchdog = WokenOnly::new(Box::pin(watchdog(
        state,
        settings.idle_timeout,
        settings.header_read_timeout,
    )));
    let mut drain_signal = Some(WokenOnly::new(Box::pin(async move {
        let mut watcher = watcher;
        let _ = watcher.changed().await;
        watcher
    })));
    // Kept until the connection ends, so that the drain waits for it.
    let mut _draining = None;
    let ended = std::future::poll_fn(|cx| {
        if let Some(signal) = drain_signal.as_mut() {
            if let Poll::Ready(watcher) = signal.poll_if_woken(cx) {
                drain_signal = None;
                _draining = Some(watcher);
                connection.as_mut().graceful_shutdown();
            }
        }
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        watchdog.poll_if_woken(cx).map(|()| None)
    })
    .await;
    match ended {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            tracing::debug!(%error, %remote, "connection ended with an error");
        }
        None => {
            tracing::debug!(%remote, "connection closed by the idle or header-read deadline");
        }
    }
}
