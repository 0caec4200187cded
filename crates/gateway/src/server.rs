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

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use prometheus_client::metrics::counter::Counter;

use crate::connection::{ConnIo, ConnState};
use crate::h1::{self, Conn};
use crate::interim::InterimSink;
use crate::lag::SchedulingLag;
use crate::proxy::ClientInfo;
use crate::state::GatewayState;

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

    /// `listener` (from [`TrafficListener::for_worker`]) registered with the current runtime.
    pub(crate) fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::from_std(listener)?,
        })
    }

    /// A listener for another worker's event loop, registered with none yet: with
    /// `reuse_port` a socket of its own on the same address (the kernel spreads new
    /// connections over the sockets), otherwise this socket again (each loop takes the next
    /// connection when it is ready to; no other process can join).
    pub(crate) async fn for_worker(&self, reuse_port: bool) -> io::Result<std::net::TcpListener> {
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

/// The event loops' open connections, for a loop that accepted a connection to hand it to the
/// one with the fewest (Envoy's exact balance): a loop ready first on a shared socket would
/// otherwise take most of a burst, and the kernel's hash of `reuse_port` spreads a few
/// long-lived connections unevenly.
pub(crate) struct Balance {
    open: Box<[AtomicUsize]>,
    handoffs: Box<[mpsc::UnboundedSender<Handed>]>,
}

/// A connection accepted by one loop, to be served by another.
pub(crate) struct Handed {
    stream: std::net::TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
    open: Open,
}

/// One connection counted open on a loop until it ends.
struct Open {
    balance: Arc<Balance>,
    index: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(open) = self.balance.open.get(self.index) {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Balance {
    /// For `loops` event loops; each loop's receiver of the connections handed to it.
    pub(crate) fn new(loops: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (handoffs, receivers) = (0..loops)
            .map(|_| mpsc::unbounded_channel())
            .unzip::<_, _, Vec<_>, Vec<_>>();
        let balance = Self {
            open: (0..loops).map(|_| AtomicUsize::new(0)).collect(),
            handoffs: handoffs.into(),
        };
        (Arc::new(balance), receivers)
    }

    /// The loop that serves a connection loop `own` accepted: the one with the fewest open
    /// connections, not overloaded, `own` unless another has fewer; counted open there.
    fn place(self: &Arc<Self>, own: usize, lag: &SchedulingLag) -> Open {
        let mut index = own;
        let mut fewest = self
            .open
            .get(own)
            .map_or(usize::MAX, |open| open.load(Ordering::Relaxed));
        for (other, open) in self.open.iter().enumerate() {
            let count = open.load(Ordering::Relaxed);
            if count < fewest && !lag.overloaded_loop(other) {
                (index, fewest) = (other, count);
            }
        }
        if let Some(open) = self.open.get(index) {
            open.fetch_add(1, Ordering::Relaxed);
        }
        Open {
            balance: Arc::clone(self),
            index,
        }
    }
}

/// What a loop is among several: its index, the balance, and the connections handed to it.
pub(crate) struct Lane {
    pub(crate) index: usize,
    pub(crate) balance: Arc<Balance>,
    pub(crate) handed: mpsc::UnboundedReceiver<Handed>,
}

/// Serves `listener` on the current event loop until `shutdown`, then drains. Among several
/// loops (`lane`), a connection goes to the loop with the fewest open.
pub(crate) async fn serve(
    shared: Arc<GatewayState>,
    listener: TrafficListener,
    permits: Arc<Semaphore>,
    accepted: Option<Counter>,
    lane: Option<Lane>,
    shutdown: impl Future<Output = ()>,
) {
    // Each connection holds a receiver until it ends: the drain is over when none is left.
    let (drain, _) = watch::channel(());
    tokio::pin!(shutdown);
    let serving = Serving {
        shared: Arc::clone(&shared),
        accepted,
        drain: drain.subscribe(),
    };
    let balance = lane.map(|lane| {
        // Connections handed over by the other loops, served here until the drain.
        tokio::spawn(serve_handed(lane.handed, serving.clone()));
        (lane.index, lane.balance)
    });
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
        let open = match &balance {
            Some((index, balance)) => {
                let open = balance.place(*index, &shared.lag);
                if open.index != *index {
                    hand_over(&serving, balance, stream, remote, (permit, open));
                    continue;
                }
                Some(open)
            }
            None => None,
        };
        serving.spawn(stream, remote, (permit, open));
    }
    drop((listener, serving));
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

/// What a loop serves its connections with: the gateway, its count of connections, its drain.
#[derive(Clone)]
struct Serving {
    shared: Arc<GatewayState>,
    accepted: Option<Counter>,
    drain: watch::Receiver<()>,
}

impl Serving {
    /// A task serving one connection, counted; it holds its place under `max_connections`
    /// (and on its loop's count) until it ends.
    fn spawn(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        places: (OwnedSemaphorePermit, Option<Open>),
    ) {
        if let Some(accepted) = &self.accepted {
            accepted.inc();
        }
        let shared = Arc::clone(&self.shared);
        let watcher = self.drain.clone();
        // One clock reading per poll of the connection (`clock::now`).
        tokio::spawn(crate::clock::one_clock_per_poll(async move {
            serve_connection(shared, stream, remote, watcher).await;
            drop(places);
        }));
    }
}

/// Sends a connection to the loop `open` names (taken off this loop's reactor first); served
/// `here` after all when that loop is gone (its thread could not start).
fn hand_over(
    here: &Serving,
    balance: &Balance,
    stream: TcpStream,
    remote: SocketAddr,
    (permit, open): (OwnedSemaphorePermit, Open),
) {
    let Ok(stream) = stream.into_std() else {
        return;
    };
    let Some(handoff) = balance.handoffs.get(open.index) else {
        return;
    };
    let handed = Handed {
        stream,
        remote,
        permit,
        open,
    };
    if let Err(mpsc::error::SendError(handed)) = handoff.send(handed) {
        if let Ok(stream) = TcpStream::from_std(handed.stream) {
            here.spawn(stream, handed.remote, (handed.permit, Some(handed.open)));
        }
    }
}

/// Serves the connections other loops hand to this one, until the drain begins.
async fn serve_handed(mut handed: mpsc::UnboundedReceiver<Handed>, mut serving: Serving) {
    loop {
        let next = tokio::select! {
            next = handed.recv() => next,
            _ = serving.drain.changed() => None,
        };
        let Some(Handed {
            stream,
            remote,
            permit,
            open,
        }) = next
        else {
            return;
        };
        if let Ok(stream) = TcpStream::from_std(stream) {
            serving.spawn(stream, remote, (permit, Some(open)));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_loop_with_the_fewest_open_unless_it_is_overloaded() {
        let (balance, _handed) = Balance::new(2);
        let lag = SchedulingLag::new(2);
        let first = balance.place(0, &lag);
        assert_eq!(first.index, 0, "a tie stays on the loop that accepted");
        let second = balance.place(0, &lag);
        assert_eq!(second.index, 1, "loop 1 has fewer open");
        let third = balance.place(1, &lag);
        assert_eq!(third.index, 1, "a tie stays on the loop that accepted");
        drop((second, third));
        // Loop 1 has fewer open but runs past the overload bound: the connection stays.
        lag.set_bound(Some(Duration::from_millis(50)));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                crate::worker::enter(1);
                lag.observe(Duration::from_millis(400));
            });
        });
        let fourth = balance.place(0, &lag);
        assert_eq!(fourth.index, 0);
        drop(first);
        assert_eq!(balance.place(1, &lag).index, 1);
    }
}
