//! The traffic listener: accept, TLS, one task per connection, graceful drain.
//!
//! Connections are bounded by `server.max_connections`: beyond it the accept loop waits, so
//! further clients queue in the kernel's backlog rather than in our memory. The same holds while
//! the gateway itself is overloaded (`[server.overload]`: its event loop runs further behind
//! than `max_loop_delay`): the loop does not accept until it has caught up. On shutdown the loop
//! stops accepting, asks every connection to finish its requests (HTTP/1 closes after the
//! current response — `h1` or hyper's graceful shutdown —, HTTP/2 sends GOAWAY) and waits up to
//! the drain timeout. Each connection is served by `h1::serve`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use prometheus_client::metrics::counter::Counter;
use sekisho_config::WorkerModel;

use crate::connection::{ConnIo, ConnState};
use crate::h1::{self, Conn};
use crate::interim::InterimSink;
use crate::proxy::ClientInfo;
use crate::state::GatewayState;
use crate::worker;

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

    /// A listener for another worker's event loop, registered with none yet: with
    /// `reuse_port` a socket of its own on the same address (the kernel spreads new
    /// connections over the sockets), otherwise this socket again (each loop takes the next
    /// connection when it is ready to; no other process can join).
    async fn for_worker(&self, reuse_port: bool) -> io::Result<std::net::TcpListener> {
        let own = if reuse_port {
            let address = self.local_addr()?.to_string();
            Self::bind(&address, true).await?.listener.into_std()?
        } else {
            use std::os::fd::AsFd;
            std::net::TcpListener::from(self.listener.as_fd().try_clone_to_owned()?)
        };
        Ok(own)
    }
}

/// Serves `listener` until `shutdown`, then drains: on this event loop alone
/// (`worker_model = "shared"`, one worker, or not `workers`), or on one per worker — this one is worker 0,
/// the others run on threads of their own, each accepting on its own listener (a copy of this
/// one, or with `reuse_port` one of its own on the same address) — until every one has drained.
pub(crate) async fn serve_workers(
    shared: Arc<GatewayState>,
    listener: TrafficListener,
    shutdown: impl Future<Output = ()>,
    workers: bool,
) {
    let server = Arc::clone(&shared.runtime.load().config).server.clone();
    let loops = if workers { server.event_loops() } else { 1 };
    let permits = Arc::new(Semaphore::new(server.max_connections.get() as usize));
    let per_worker = server.worker_model == WorkerModel::PerWorker;
    let accepted = |index: usize| per_worker.then(|| shared.metrics.worker_connections(index));
    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::new();
    for index in 1..loops {
        let own_listener = match listener.for_worker(server.reuse_port).await {
            Ok(own) => own,
            Err(error) => {
                tracing::error!(%error, worker = index, "cannot listen for a worker; it does not start");
                continue;
            }
        };
        let worker = Worker {
            index,
            shared: Arc::clone(&shared),
            listener: own_listener,
            permits: Arc::clone(&permits),
            accepted: accepted(index),
            stopped: stopped.clone(),
        };
        match worker.spawn() {
            Ok(done) => workers.push(done),
            Err(error) => tracing::error!(%error, worker = index, "cannot start a worker"),
        }
    }
    if !workers.is_empty() {
        tracing::info!(
            workers = workers.len() + 1,
            "serving on an event loop per worker"
        );
    }
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let accepted = accepted(0);
    serve(shared, listener, permits, accepted, shutdown).await;
    for done in workers {
        let _ = done.await;
    }
}

/// A worker's event loop, to be started on a thread of its own.
struct Worker {
    index: usize,
    shared: Arc<GatewayState>,
    listener: std::net::TcpListener,
    permits: Arc<Semaphore>,
    accepted: Option<Counter>,
    stopped: watch::Receiver<bool>,
}

impl Worker {
    /// Starts the worker's thread and its current-thread runtime; the receiver hears when it
    /// has drained. The runtime lives on until the gateway is dropped: connections to targets
    /// opened on it, and tasks spawned there, may still serve the other loops.
    fn spawn(self) -> io::Result<tokio::sync::oneshot::Receiver<()>> {
        let (done, drained) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut release = self.shared.release.subscribe();
        std::thread::Builder::new()
            .name(format!("sekisho-worker-{}", self.index))
            .spawn(move || {
                worker::enter(self.index);
                runtime.block_on(async move {
                    let Self {
                        index,
                        shared,
                        listener,
                        permits,
                        accepted,
                        mut stopped,
                    } = self;
                    shared.lag.attach(index, tokio::runtime::Handle::current());
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let shutdown = async move {
                                let _ = stopped.wait_for(|stop| *stop).await;
                            };
                            let listener = TrafficListener { listener };
                            serve(shared, listener, permits, accepted, shutdown).await;
                        }
                        Err(error) => tracing::error!(%error, worker = index, "cannot listen"),
                    }
                    let _ = done.send(());
                    while release.changed().await.is_ok() {}
                });
            })?;
        Ok(drained)
    }
}

async fn serve(
    shared: Arc<GatewayState>,
    listener: TrafficListener,
    permits: Arc<Semaphore>,
    accepted: Option<Counter>,
    shutdown: impl Future<Output = ()>,
) {
    // Each connection holds a receiver until it ends: the drain is over when none is left.
    let (drain, _) = watch::channel(());
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
        if let Some(accepted) = &accepted {
            accepted.inc();
        }
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

pub(crate) async fn serve_connection(
    shared: Arc<GatewayState>,
    stream: TcpStream,
    remote: SocketAddr,
    watcher: watch::Receiver<()>,
) {
    let (settings, tls) = {
        let runtime = shared.runtime.load();
        (runtime.listener.clone(), runtime.tls.clone())
    };
    match tls {
        None => serve_on(shared, stream, remote, None, settings, watcher).await,
        // Boxed: a TLS connection's handshake and stream are large, and the task of every
        // connection would otherwise be sized for them (≈ 9 KB instead of ≈ 2.5 KB).
        Some(acceptor) => {
            Box::pin(serve_tls(
                shared, stream, remote, acceptor, settings, watcher,
            ))
            .await;
        }
    }
}

async fn serve_tls(
    shared: Arc<GatewayState>,
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    settings: crate::runtime::ListenerSettings,
    watcher: watch::Receiver<()>,
) {
    let handshake =
        tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)).await;
    match handshake {
        Ok(Ok(tls_stream)) => {
            let is_h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_on(shared, tls_stream, remote, Some(is_h2), settings, watcher).await;
        }
        Ok(Err(error)) => tracing::debug!(%error, %remote, "TLS handshake failed"),
        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
    }
}

/// Serves a connection over `io`: `tls` says whether it is TLS and, if so, whether it
/// negotiated h2 (`http2` from the start; otherwise the owned HTTP/1.1 path when on).
async fn serve_on<I>(
    shared: Arc<GatewayState>,
    io: I,
    remote: SocketAddr,
    tls: Option<bool>,
    settings: crate::runtime::ListenerSettings,
    watcher: watch::Receiver<()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let is_h2 = tls == Some(true);
    let start = if is_h2 {
        h1::Start::Http2
    } else if settings.owned_http1 {
        h1::Start::Owned
    } else {
        h1::Start::Hyper
    };
    let state = ConnState::new(Arc::clone(&shared.metrics), is_h2);
    let mut client = ClientInfo::new(remote, tls.is_some());
    if start == h1::Start::Owned {
        client.interim = Some(InterimSink::default());
    }
    let conn = Conn {
        io: ConnIo::new(io, Arc::clone(&state)),
        client: Arc::new(client),
        shared,
        state,
        settings,
        watcher,
    };
    h1::serve(conn, start).await;
}
