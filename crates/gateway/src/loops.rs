//! The event loops that serve traffic (decision 0023): one on the current runtime, or with
//! `worker_model = "per_worker"` one per worker — worker 0's is the current runtime, each other
//! worker gets a thread and a current-thread runtime of its own, and accepts on a listener of
//! its own (a copy of the socket, or with `reuse_port` a socket of its own on the address). A
//! connection accepted by one loop is served by the loop with the fewest open
//! (`server::Balance`). A stop drains every loop; the call returns when all have drained.

use std::future::Future;
use std::io;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use sekisho_config::WorkerModel;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::server::{self, Balance, Lane, TrafficListener};
use crate::state::GatewayState;
use crate::worker;

/// Serves `listener` until `shutdown`, then drains: on this event loop alone (`workers`
/// false, `worker_model = "shared"`, or one worker), or on one per worker.
pub(crate) async fn serve(
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
    // The listeners first; the loops are numbered without a gap (`worker::index`), so a
    // listener that cannot be made ends the count there.
    let mut listeners = Vec::new();
    for index in 1..loops {
        match listener.for_worker(server.reuse_port).await {
            Ok(own) => listeners.push(own),
            Err(error) => {
                tracing::error!(%error, worker = index, "cannot listen for more workers");
                break;
            }
        }
    }
    let (balance, receivers) = Balance::new(listeners.len() + 1);
    let several = !listeners.is_empty();
    let mut lanes = receivers.into_iter().enumerate().map(|(index, handed)| {
        several.then(|| Lane {
            index,
            balance: Arc::clone(&balance),
            handed,
        })
    });
    let own_lane = lanes.next().flatten();
    let mut started = Vec::new();
    for ((index, own), lane) in (1..).zip(listeners).zip(lanes) {
        let worker = Worker {
            index,
            shared: Arc::clone(&shared),
            listener: own,
            permits: Arc::clone(&permits),
            accepted: accepted(index),
            lane,
            stopped: stopped.clone(),
        };
        match worker.spawn() {
            Ok(done) => started.push(done),
            Err(error) => tracing::error!(%error, worker = index, "cannot start a worker"),
        }
    }
    if !started.is_empty() {
        tracing::info!(
            workers = started.len() + 1,
            "serving on an event loop per worker"
        );
    }
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let own_accepted = accepted(0);
    server::serve(shared, listener, permits, own_accepted, own_lane, shutdown).await;
    for done in started {
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
    lane: Option<Lane>,
    stopped: watch::Receiver<bool>,
}

impl Worker {
    /// Starts the worker's thread and its current-thread runtime; the receiver hears when it
    /// has drained. The runtime lives on until the gateway is dropped: connections to targets
    /// opened on it, and tasks spawned there, may still serve the other loops.
    fn spawn(self) -> io::Result<oneshot::Receiver<()>> {
        let (done, drained) = oneshot::channel();
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
                        lane,
                        mut stopped,
                    } = self;
                    shared.lag.attach(index, tokio::runtime::Handle::current());
                    match TrafficListener::from_std(listener) {
                        Ok(listener) => {
                            let shutdown = async move {
                                let _ = stopped.wait_for(|stop| *stop).await;
                            };
                            server::serve(shared, listener, permits, accepted, lane, shutdown)
                                .await;
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
