//! sekisho-gateway: the data plane.
//!
//! What it is for: accepting client connections (HTTP/1.1, HTTP/2, TLS), routing each request,
//! forwarding it to a target over a pooled connection with deadlines and limits, streaming the
//! answer back, and turning every failure into the contract's JSON at one edge ([`edge`]). It
//! also owns the live config ([`Gateway::reload`]) and the metrics registry.
//!
//! What it refuses to do: buffer bodies whole, block the reactor, panic on a request path, or
//! serve the admin API (that is `sekisho-admin`, which reads the gateway through [`Gateway`]).
//!
//! Public surface: [`Gateway`] and the types its methods take and return, [`new_request_id`],
//! [`edge::error_json`] (the admin API answers errors in the same JSON), and what the cache
//! benchmark drives directly ([`cache`], [`body::ResponseBody`]). Everything else is
//! `pub(crate)`, and `unreachable_pub` keeps it so.
#![warn(unreachable_pub)]

// The modules form layers, each importing only modules below it: the order is in
// ARCHITECTURE.md ("Module layers") and tests/layers.rs, which fails on an import upwards.
pub mod body;
mod boxed;
mod build_error;
pub mod cache;
mod client_body;
mod client_ip;
mod clock;
mod connection;
pub mod edge;
mod fallback;
mod h1;
mod health;
mod http2;
mod interim;
mod lag;
mod loops;
mod metrics;
mod pool;
mod proxy;
mod ratelimit;
mod registry;
mod request_id;
mod retry;
mod router;
mod runtime;
mod server;
mod state;
mod status_set;
mod store_link;
mod sync;
mod tls;
mod upstream;
mod woken;
mod worker;

// The gateway's own faces (impl blocks of `Gateway`): reloading, and what the admin side reads.
mod reload;
mod views;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sekisho_config::Config;

// What `Gateway`'s methods take and return (the admin API's views among them).
pub use ratelimit::RateLimitView;
pub use reload::{ReloadError, ReloadSummary};
pub use request_id::new_request_id;
pub use runtime::BuildError;
pub use server::TrafficListener;
pub use state::ReloadRecord;
pub use store_link::StoreStatus;
pub use upstream::CheckRecord;
pub use views::{
    BulkheadView, CircuitActionError, CircuitView, PurgeError, RetryBudgetView, RetryView,
    RouteView, Status, TargetView, TransitionView, UpstreamView,
};

use clock::unix_seconds;
use lag::SchedulingLag;
use metrics::Metrics;
use registry::StateRegistry;
use runtime::Runtime;
use state::GatewayState;
use upstream::ClientCache;

/// A handle on a running gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<GatewayState>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field(
                "generation",
                &self.shared.generation.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Gateway {
    /// Compiles `config`; `config_path` is the file reloads read again.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Self, BuildError> {
        Self::with_auth(config, config_path, None)
    }

    /// As [`Gateway::new`], with edge authentication (`[auth]`): its endpoints and the routes'
    /// `auth` requirements are served with `auth`, opened beforehand
    /// (`sekisho_auth::Auth::open`).
    pub fn with_auth(
        config: Config,
        config_path: Option<PathBuf>,
        auth: Option<Arc<sekisho_auth::Auth>>,
    ) -> Result<Self, BuildError> {
        let loops = config.server.event_loops();
        let lag = Arc::new(SchedulingLag::new(loops));
        let metrics = Metrics::new(&lag, auth.as_ref().map(|auth| auth.figures()));
        let clients = ClientCache::new(loops);
        let states = StateRegistry::default();
        let base_dir = config_path.as_deref().and_then(Path::parent);
        let runtime = Runtime::build(Arc::new(config), base_dir, &clients, &states, &metrics, 1)?;
        metrics.set_upstreams(runtime.upstreams.values().cloned().collect());
        metrics.set_adaptive_limits(runtime.adaptive_limits());
        metrics
            .config_loaded_timestamp
            .set(unix_seconds(runtime.loaded_at));
        let unrouted_metrics = metrics.route("", "");
        Ok(Self {
            shared: Arc::new(GatewayState {
                sheds_from_head: AtomicBool::new(runtime.sheds_from_head()),
                shedding: AtomicBool::new(false),
                runtime: ArcSwap::from_pointee(runtime),
                unrouted_metrics,
                metrics,
                clients,
                states,
                health: health::Supervisor::default(),
                config_path,
                draining: AtomicBool::new(false),
                serving: AtomicBool::new(false),
                generation: AtomicU64::new(1),
                reload_lock: Mutex::new(ReloadRecord::default()),
                file_bytes: Mutex::new(None),
                lag,
                auth,
                release: tokio::sync::watch::channel(()).0,
            }),
        })
    }

    /// Binds the traffic listener named by the config.
    pub async fn bind(&self) -> std::io::Result<TrafficListener> {
        let config = Arc::clone(&self.shared.runtime.load().config);
        TrafficListener::bind(&config.server.listen.0, config.server.reuse_port).await
    }

    /// Serves `listener` until `shutdown` resolves, then drains: returns when every connection
    /// has finished or the drain timeout has passed. With `worker_model = "per_worker"` and
    /// more than one worker, the current runtime is worker 0's event loop and each other worker
    /// gets a thread and a current-thread runtime of its own.
    pub async fn serve(&self, listener: TrafficListener, shutdown: impl Future<Output = ()>) {
        self.serve_with(listener, shutdown, true).await;
    }

    /// As [`Gateway::serve`], on the current runtime alone whatever `server.workers` says: for
    /// a gateway embedded in another program (and the in-process tests, whose paused clocks
    /// other runtimes would not share).
    pub async fn serve_here(&self, listener: TrafficListener, shutdown: impl Future<Output = ()>) {
        self.serve_with(listener, shutdown, false).await;
    }

    async fn serve_with(
        &self,
        listener: TrafficListener,
        shutdown: impl Future<Output = ()>,
        workers: bool,
    ) {
        self.shared.serving.store(true, Ordering::Release);
        self.shared.probe_lag_if_needed();
        self.shared
            .health
            .reconcile(&self.shared.runtime.load(), &self.shared.metrics);
        loops::serve(Arc::clone(&self.shared), listener, shutdown, workers).await;
        self.shared.health.stop();
        self.shared.serving.store(false, Ordering::Release);
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.shared.runtime.load().config)
    }

    /// Edge authentication, when running.
    pub fn auth(&self) -> Option<&Arc<sekisho_auth::Auth>> {
        self.shared.auth.as_ref()
    }

    /// The path reloads read.
    pub fn config_path(&self) -> Option<&Path> {
        self.shared.config_path.as_deref()
    }
}
