//! The state every connection, the reload and the admin side share: the generation in force
//! (swapped whole by a reload), the metrics registry, the clients and the cross-reload registry,
//! the health-check supervisor, and the gateway's own flags.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use std::sync::Arc;

use crate::health;
use crate::lag::SchedulingLag;
use crate::metrics::{Metrics, RouteMetrics};
use crate::registry::StateRegistry;
use crate::runtime::Runtime;
use crate::upstream::ClientCache;

/// The last reload attempt and its result.
#[derive(Debug, Clone, Default)]
pub struct ReloadRecord {
    /// When it was tried.
    pub at: Option<SystemTime>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// State shared by every connection and the admin side.
pub(crate) struct GatewayState {
    pub(crate) runtime: ArcSwap<Runtime>,
    /// Whether the generation in force may shed a request from its head alone
    /// ([`Runtime::sheds_from_head`]), kept beside it so that a request on a config where none
    /// can looks no further (`proxy::early`).
    pub(crate) sheds_from_head: AtomicBool,
    /// A route's adaptive limit shed a request lately (set by every shed, cleared by a look
    /// from the head that found the route's limit with room): only then does a request look for
    /// a full limit before it is built (`proxy::early`), so a config with limits that are not
    /// full pays nothing for it.
    pub(crate) shedding: AtomicBool,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clients: ClientCache,
    pub(crate) states: StateRegistry,
    pub(crate) health: health::Supervisor,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) unrouted_metrics: RouteMetrics,
    pub(crate) draining: AtomicBool,
    pub(crate) serving: AtomicBool,
    pub(crate) generation: AtomicU64,
    pub(crate) reload_lock: Mutex<ReloadRecord>,
    /// The config file's bytes as the last reload (or the watcher's first look) read them, so
    /// the file watch compares against what was last loaded, whoever loaded it.
    pub(crate) file_bytes: Mutex<Option<Vec<u8>>>,
    /// The event loop's own scheduling delay, for the adaptive limits, the circuit breakers and
    /// the overload guard (probed only while one of them is configured).
    pub(crate) lag: Arc<SchedulingLag>,
    /// Edge authentication, when `[auth]` is set (opened by the binary, kept across reloads).
    pub(crate) auth: Option<Arc<sekisho_auth::Auth>>,
    /// Dropped with the state: the workers' event loops (`server.rs`), kept running after
    /// their drain for what was opened on them, then end.
    pub(crate) release: tokio::sync::watch::Sender<()>,
}

impl GatewayState {
    /// Applies the generation in force's overload bound, and starts measuring the event loop's
    /// delay when it has one, an adaptive limit or a circuit breaker, which must not read the
    /// gateway's own saturation as a slow upstream (once; the probe then runs until the gateway
    /// is dropped).
    pub(crate) fn probe_lag_if_needed(&self) {
        let runtime = self.runtime.load();
        let bound = runtime
            .config
            .server
            .overload
            .as_ref()
            .map(|overload| overload.max_loop_delay.0);
        self.lag.set_bound(bound);
        if bound.is_some()
            || runtime
                .router
                .routes()
                .iter()
                .any(|r| r.concurrency.is_some())
            || runtime.upstreams.values().any(|u| u.circuit.is_some())
        {
            self.lag.start();
        }
    }

    /// Shutting down: `/ready` turns 503.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
