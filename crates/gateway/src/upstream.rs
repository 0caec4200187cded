//! Upstreams: groups of targets, their health, and the pooled clients that reach them.
//!
//! Two lifetimes meet here. An [`UpstreamGroup`] belongs to one config generation: its targets,
//! balancer and settings as that config says. The state of a target — health, ejections, latency
//! estimate, requests in flight — belongs to the gateway: it lives in the [`StateRegistry`],
//! keyed by upstream name and target address, so that a reload which keeps a target keeps what
//! was learnt about it. Pools likewise belong to the gateway ([`ClientCache`]).
//!
//! Which targets may take a request is decided by a [`Snapshot`], rebuilt only when something
//! changed (a health transition, an ejection, an ejection or slow start running out), so a pick
//! costs an atomic load and a comparison before the balancer runs:
//!
//! 1. usable = healthy by the active checks and not ejected by outlier detection;
//! 2. the primaries that are usable, if at least `failover_threshold` of the primaries are;
//!    otherwise those plus the usable backups;
//! 3. none at all: `panic = "fail"` answers 503 NO_HEALTHY_UPSTREAM, `panic = "spread"` spreads
//!    over every target, ignoring health.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use sekisho_config::{Balance, FailureKind, HashKey, PanicMode, Upstream, UpstreamProtocol};
use sekisho_policy::balance::{Algorithm, Balancer, Pool, TargetLoad};
use sekisho_policy::breaker::{Breaker, BreakerConfig, Window};
use sekisho_policy::budget::RetryBudget;
use sekisho_policy::bulkhead::Bulkhead;
use sekisho_policy::concurrency::{AdaptiveLimit, Settings as ConcurrencySettings};
use sekisho_policy::ratelimit::local::LocalLimiter;
use sekisho_policy::ratelimit::Limit as RateLimitParams;

use crate::ratelimit::StoreLink;

use tokio::time::Instant;

use crate::body::RequestBody;
use crate::pool::{CallError, Http1Client, Http1Pool, Lease};
use http::{Request, Response, Uri};
use hyper::body::Incoming;

/// hyper-util's pooled client, for h2c targets (one multiplexed connection each).
pub type H2cClient = Client<HttpConnector, RequestBody>;

/// How an upstream's targets are reached, by protocol.
#[derive(Debug, Clone)]
pub enum UpstreamClient {
    /// HTTP/1.1: the gateway's own pools ([`crate::pool`]).
    Http1(Arc<Http1Client>),
    /// h2c (HTTP/2 without TLS, prior knowledge): hyper-util's client.
    H2c(Box<H2cClient>),
}

impl UpstreamClient {
    /// How one target is reached.
    fn for_target(&self, authority: &Authority) -> TargetConn {
        match self {
            Self::Http1(client) => TargetConn::Http1(client.pool_for(authority)),
            Self::H2c(client) => {
                TargetConn::H2c(Box::new((H2cClient::clone(client), authority.clone())))
            }
        }
    }
}

/// How one target is reached.
#[derive(Debug)]
pub enum TargetConn {
    /// Through the target's pool of HTTP/1.1 connections.
    Http1(Arc<Http1Pool>),
    /// Through hyper-util's client, at this authority.
    H2c(Box<(H2cClient, Authority)>),
}

impl TargetConn {
    /// Open connections idle in the target's pool (HTTP/1.1).
    pub fn idle(&self) -> Option<usize> {
        match self {
            Self::Http1(pool) => Some(pool.idle()),
            Self::H2c(..) => None,
        }
    }

    /// Sends `request` (its URI the origin-form target) to the target; the answer comes with
    /// the connection's lease (HTTP/1.1), to be kept until the body is done.
    pub async fn send(
        &self,
        mut request: Request<RequestBody>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Option<Lease>), CallError> {
        match self {
            Self::Http1(pool) => pool.send(request, now).await,
            Self::H2c(h2c) => {
                let (client, authority) = h2c.as_ref();
                let mut parts = request.uri().clone().into_parts();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = Some(authority.clone());
                *request.uri_mut() =
                    Uri::from_parts(parts).map_err(|e| CallError::Request(e.into()))?;
                match client.request(request).await {
                    Ok(response) => Ok((response, None)),
                    Err(error) if error.is_connect() => Err(CallError::Connect(error.into())),
                    Err(error) => Err(CallError::Request(error.into())),
                }
            }
        }
    }
}

/// What makes two upstreams' clients interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    pool_max_idle: u32,
    pool_idle_timeout: Duration,
}

/// Clients by settings, kept across reloads.
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<ClientKey, UpstreamClient>>,
}

impl ClientCache {
    /// The client for `upstream`'s settings, reusing an existing one (and its pool) if any.
    pub fn client_for(&self, upstream: &Upstream) -> UpstreamClient {
        let key = ClientKey {
            protocol: upstream.protocol,
            connect_timeout: upstream.connect_timeout.get(),
            pool_max_idle: upstream.pool_max_idle_per_target,
            pool_idle_timeout: upstream.pool_idle_timeout.get(),
        };
        lock(&self.clients)
            .entry(key.clone())
            .or_insert_with(|| build_client(&key))
            .clone()
    }
}

fn build_client(key: &ClientKey) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.enforce_http(true);
    if key.protocol == UpstreamProtocol::Http1 {
        return UpstreamClient::Http1(Http1Client::new(
            connector,
            key.pool_max_idle as usize,
            key.pool_idle_timeout,
        ));
    }
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(key.pool_max_idle as usize)
        .pool_idle_timeout(key.pool_idle_timeout)
        .retry_canceled_requests(true)
        .set_host(false)
        .http2_only(true);
    UpstreamClient::H2c(Box::new(builder.build(connector)))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds on the registry's clock; 0 means "never".
type Millis = u64;

/// What is known about one target, kept across reloads.
#[derive(Debug)]
pub struct TargetState {
    /// In flight, latency estimate and error rate, as the balancers read them.
    pub load: TargetLoad,
    /// Passing the active health checks (true until checks say otherwise).
    healthy: AtomicBool,
    /// Failures in a row, for outlier detection.
    consecutive_failures: AtomicU32,
    /// Ejected until this time; 0: not ejected.
    ejected_until: AtomicU64,
    /// Ejections that still count towards the next ejection's length (decays while healthy).
    ejection_level: AtomicU32,
    /// Ejections since the target appeared.
    ejections_total: AtomicU64,
    /// When it last came back into service, for slow start; 0: not ramping.
    returned_at: AtomicU64,
    /// Requests and failures in the current outlier window.
    window_requests: AtomicU64,
    window_failures: AtomicU64,
    /// Times a balancer chose it.
    picks: AtomicU64,
    /// The last active check.
    last_check: Mutex<Option<CheckRecord>>,
}

/// The outcome of one active health check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckRecord {
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
    /// Whether it passed.
    pub ok: bool,
    /// What it found: a status, or what went wrong.
    pub detail: String,
    /// How long it took.
    pub duration_ms: f64,
}

impl TargetState {
    fn new(clock: &Clock, returned_at: Millis) -> Self {
        Self {
            load: TargetLoad::new(clock.epoch.into_std()),
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejection_level: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            returned_at: AtomicU64::new(returned_at),
            window_requests: AtomicU64::new(0),
            window_failures: AtomicU64::new(0),
            picks: AtomicU64::new(0),
            last_check: Mutex::new(None),
        }
    }

    /// Passing the active checks.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Ejected by outlier detection at `now`.
    pub fn is_ejected(&self, now: Millis) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Times ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Times picked.
    pub fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// The last active check, if any.
    pub fn last_check(&self) -> Option<CheckRecord> {
        lock(&self.last_check).clone()
    }

    pub(crate) fn set_last_check(&self, record: CheckRecord) {
        *lock(&self.last_check) = Some(record);
    }

    /// Back into service at `at`: the failure streak starts over and slow start from `at`.
    fn back_in_service(&self, at: Millis) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.returned_at.store(at, Ordering::Relaxed);
    }

    /// Ends the ejection that runs until `until`, once, whoever tries (a request rebuilding the
    /// snapshot, a passing check): true for the one that did.
    fn end_ejection(&self, until: Millis, back_at: Millis) -> bool {
        let ended = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if ended {
            self.back_in_service(back_at);
        }
        ended
    }

    /// Marks it healthy or not after its active checks crossed a threshold; a target coming
    /// back ramps up. Returns whether anything changed.
    pub fn set_health(&self, upstream: &UpstreamState, healthy: bool, now: Millis) -> bool {
        if self.healthy.swap(healthy, Ordering::Relaxed) == healthy {
            return false;
        }
        if healthy {
            self.back_in_service(now);
        }
        upstream.changed();
        true
    }

    /// A passing active check ends an ejection early (a success brings the target back).
    pub fn uneject(&self, upstream: &UpstreamState, now: Millis) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until <= now || !self.end_ejection(until, now) {
            return false;
        }
        upstream.changed();
        true
    }
}

/// The gateway's clock for target state: milliseconds since the registry was made.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// `at` on this clock; never 0, which means "never".
    pub fn millis(&self, at: Instant) -> Millis {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}

/// What an upstream has learnt, kept across reloads: its targets' states and a counter of
/// changes that invalidate snapshots.
#[derive(Debug)]
pub struct UpstreamState {
    name: Arc<str>,
    targets: Mutex<HashMap<String, Arc<TargetState>>>,
    changes: AtomicU64,
    /// End of the current outlier window.
    window_end: AtomicU64,
    /// The circuit breaker and the settings it was made with (kept while they do not change).
    breaker: Mutex<Option<(BreakerConfig, Arc<Breaker>)>>,
    /// The bulkhead and its settings (kept while they do not change, so that requests in
    /// flight across a reload still count against the same limit).
    bulkhead: Mutex<Option<(BulkheadSettings, Arc<Bulkhead>)>>,
}

impl UpstreamState {
    /// Something changed that may change which targets are eligible.
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bulkhead for `config`: the one in use if its settings are the same, a new one
    /// otherwise.
    fn bulkhead(&self, config: &sekisho_config::Bulkhead) -> Arc<Bulkhead> {
        let settings = (
            config.max_concurrent.0,
            config.max_queued,
            config.max_wait.0,
        );
        let mut slot = lock(&self.bulkhead);
        match &*slot {
            Some((current, bulkhead)) if *current == settings => Arc::clone(bulkhead),
            _ => {
                let bulkhead = Arc::new(Bulkhead::new(settings.0, settings.1, settings.2));
                *slot = Some((settings, Arc::clone(&bulkhead)));
                bulkhead
            }
        }
    }

    /// The breaker for `config`: the one in use if its settings are the same (its state and
    /// window survive a reload), a new closed one otherwise.
    fn breaker(&self, config: BreakerConfig) -> Arc<Breaker> {
        let mut slot = lock(&self.breaker);
        match &*slot {
            Some((current, breaker)) if *current == config => Arc::clone(breaker),
            _ => {
                let breaker = Arc::new(Breaker::new(config.clone()));
                *slot = Some((config, Arc::clone(&breaker)));
                breaker
            }
        }
    }
}

/// A bulkhead's `max_concurrent`, `max_queued` and `max_wait`.
type BulkheadSettings = (u32, u32, Duration);

/// Every upstream's state, by name; kept across reloads.
#[derive(Debug)]
pub struct StateRegistry {
    clock: Clock,
    upstreams: Mutex<HashMap<String, Arc<UpstreamState>>>,
    /// Each route's retry budget with the settings it was made with (ratio bits, floor).
    budgets: Mutex<HashMap<String, KeptBudget>>,
    /// Each route's adaptive concurrency limit with the settings it was made with.
    limits: Mutex<HashMap<String, (ConcurrencySettings, Arc<AdaptiveLimit>)>>,
    /// Each rate limit's in-process state (by scope) with the limit it was made for.
    rate_limits: Mutex<HashMap<String, (RateLimitParams, Arc<LocalLimiter>)>>,
    /// The link to Redis, kept while `store.redis` stays the same.
    store: Mutex<Option<Arc<StoreLink>>>,
    /// The response cache, kept while its bounds stay the same.
    cache: Mutex<Option<Arc<crate::cache::CacheStore>>>,
}

impl Default for StateRegistry {
    fn default() -> Self {
        Self {
            clock: Clock::new(),
            upstreams: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            rate_limits: Mutex::new(HashMap::new()),
            cache: Mutex::new(None),
            store: Mutex::new(None),
        }
    }
}

impl StateRegistry {
    /// The clock of target state.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The state of `upstream` and its `targets`: existing entries are kept, new targets start
    /// healthy (ramping up when `slow_start` applies and the upstream existed before).
    fn upstream(
        &self,
        name: &str,
        addresses: &[&str],
    ) -> (Arc<UpstreamState>, Vec<Arc<TargetState>>) {
        let mut upstreams = lock(&self.upstreams);
        let existed = upstreams.contains_key(name);
        let state = Arc::clone(upstreams.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(UpstreamState {
                name: Arc::from(name),
                targets: Mutex::new(HashMap::new()),
                changes: AtomicU64::new(0),
                window_end: AtomicU64::new(0),
                breaker: Mutex::new(None),
                bulkhead: Mutex::new(None),
            })
        }));
        drop(upstreams);
        let now = self.clock.millis(Instant::now());
        let mut targets = lock(&state.targets);
        let states = addresses
            .iter()
            .map(|address| {
                Arc::clone(targets.entry((*address).to_owned()).or_insert_with(|| {
                    // A target added by a reload is new to the traffic: it ramps up.
                    Arc::new(TargetState::new(&self.clock, if existed { now } else { 0 }))
                }))
            })
            .collect();
        drop(targets);
        (state, states)
    }

    /// The retry budget of `route`: the one it had while its budget settings stay the same, so
    /// that a reload during an outage does not hand out a fresh budget.
    pub fn retry_budget(&self, route: &str, retry: &sekisho_config::Retry) -> Arc<RetryBudget> {
        let settings = (retry.budget_ratio.0.to_bits(), retry.budget_min_per_second);
        let mut budgets = lock(&self.budgets);
        match budgets.get(route) {
            Some((kept, budget)) if *kept == settings => Arc::clone(budget),
            _ => {
                let budget = Arc::new(RetryBudget::new(
                    retry.budget_ratio.0,
                    retry.budget_min_per_second,
                    RETRY_BUDGET_WINDOW,
                    std::time::Instant::now(),
                ));
                budgets.insert(route.to_owned(), (settings, Arc::clone(&budget)));
                budget
            }
        }
    }

    /// The adaptive concurrency limit of `route`: the one it had while its settings stay the
    /// same, so that a reload keeps what the limit has learnt (and the calls it counts).
    pub fn adaptive_limit(&self, route: &str, settings: ConcurrencySettings) -> Arc<AdaptiveLimit> {
        let mut limits = lock(&self.limits);
        match limits.get(route) {
            Some((kept, limit)) if *kept == settings => Arc::clone(limit),
            _ => {
                let limit = AdaptiveLimit::new(settings, std::time::Instant::now());
                limits.insert(route.to_owned(), (settings, Arc::clone(&limit)));
                limit
            }
        }
    }

    /// The in-process state of the rate limit of `scope`: the same while its limit stays the
    /// same, so a reload does not hand every client a fresh quota.
    pub fn local_rate_limiter(&self, scope: &str, limit: RateLimitParams) -> Arc<LocalLimiter> {
        let mut limiters = lock(&self.rate_limits);
        match limiters.get(scope) {
            Some((kept, limiter)) if *kept == limit => Arc::clone(limiter),
            _ => {
                let limiter = Arc::new(LocalLimiter::new(limit, crate::ratelimit::MAX_LOCAL_KEYS));
                limiters.insert(scope.to_owned(), (limit, Arc::clone(&limiter)));
                limiter
            }
        }
    }

    /// The link to the Redis at `url`: the one already made while the URL stays the same.
    pub fn store_link(&self, url: &str) -> Arc<StoreLink> {
        let mut store = lock(&self.store);
        match &*store {
            Some(link) if link.url() == url => Arc::clone(link),
            _ => {
                let link = StoreLink::new(url);
                *store = Some(Arc::clone(&link));
                link
            }
        }
    }

    /// The response cache for `store`'s bounds, shared through Redis when `store.redis` is set.
    pub fn cache_store(&self, store: &sekisho_config::Store) -> Arc<crate::cache::CacheStore> {
        let (entries, bytes) = (
            u64::from(store.cache_max_entries.0),
            store.cache_max_bytes.0,
        );
        let cache = {
            let mut cache = lock(&self.cache);
            match &*cache {
                Some(kept) if kept.bounds() == (entries, bytes) => Arc::clone(kept),
                _ => {
                    let made = crate::cache::CacheStore::new(entries, bytes);
                    *cache = Some(Arc::clone(&made));
                    made
                }
            }
        };
        match &store.redis {
            Some(url) => cache.attach(self.store_link(url)),
            None => cache.detach(),
        }
        cache
    }

    /// The response cache, when a route has one.
    pub fn cache(&self) -> Option<Arc<crate::cache::CacheStore>> {
        lock(&self.cache).clone()
    }

    /// Whether the Redis link, if there is one, has finished its first attempt to connect.
    pub fn store_attempted(&self) -> bool {
        lock(&self.store)
            .as_ref()
            .is_none_or(|link| link.attempted())
    }

    /// The Redis link's state, when a limit has used it.
    pub fn store_status(&self) -> Option<crate::ratelimit::StoreStatus> {
        lock(&self.store).as_ref().map(|link| link.status())
    }

    /// Forgets upstreams and targets that `config` no longer names.
    pub fn retain(&self, config: &sekisho_config::Config) {
        lock(&self.limits)
            .retain(|route, _| config.routes.iter().any(|r| r.get_ref().name == *route));
        let redis_used = config
            .routes
            .iter()
            .filter_map(|r| r.get_ref().rate_limit.as_ref())
            .chain(config.server.rate_limit.as_ref())
            .any(|limit| limit.get_ref().backend == sekisho_config::RateLimitBackend::Redis)
            || config.routes.iter().any(|r| r.get_ref().cache.is_some());
        if !config.routes.iter().any(|r| r.get_ref().cache.is_some()) {
            *lock(&self.cache) = None;
        }
        let mut store = lock(&self.store);
        if !redis_used || store.as_ref().map(|l| l.url()) != config.store.redis.as_deref() {
            *store = None;
        }
        drop(store);
        lock(&self.rate_limits).retain(|scope, _| {
            scope == "*" || config.routes.iter().any(|r| r.get_ref().name == *scope)
        });
        lock(&self.budgets).retain(|route, _| {
            config
                .routes
                .iter()
                .any(|r| r.get_ref().name == *route && r.get_ref().retry.is_some())
        });
        let mut upstreams = lock(&self.upstreams);
        upstreams.retain(|name, state| {
            let Some((_, upstream)) = config.upstreams.iter().find(|(n, _)| n.get_ref() == name)
            else {
                return false;
            };
            lock(&state.targets).retain(|address, _| {
                upstream
                    .targets
                    .get_ref()
                    .iter()
                    .any(|t| &t.address == address)
            });
            true
        });
    }
}

/// A route's retry budget and the settings it was made with (ratio bits, floor).
type KeptBudget = ((u64, u32), Arc<RetryBudget>);

/// The span of requests a retry budget looks back over.
const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// One target of an upstream, in this generation.
#[derive(Debug)]
pub struct Target {
    /// As configured: "host:port".
    pub address: Arc<str>,
    /// How it is reached (its connection pool).
    pub conn: TargetConn,
    /// Relative share.
    pub weight: u32,
    /// Takes traffic only during failover.
    pub backup: bool,
    /// What is known about it (shared with other generations).
    pub state: Arc<TargetState>,
}

/// Outlier detection settings, resolved.
#[derive(Debug, Clone)]
struct OutlierSettings {
    consecutive_failures: u32,
    base_ejection: Duration,
    max_ejection: Duration,
    max_ejection_percent: f64,
    interval: Duration,
    failure_rate_margin: f64,
    minimum_requests: u64,
    failure_on: Vec<FailureKind>,
}

/// How a call to a target ended, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// An answer with this status.
    Status(u16),
    /// No connection could be made.
    ConnectError,
    /// No answer before the deadline.
    Timeout,
    /// The connection failed after it was made (reset, closed mid-answer).
    Broken,
}

impl CallOutcome {
    fn matches(self, kind: &FailureKind) -> bool {
        match (self, kind) {
            (CallOutcome::ConnectError, FailureKind::ConnectError) => true,
            (CallOutcome::Timeout, FailureKind::Timeout) => true,
            (CallOutcome::Status(status), FailureKind::Status(failing)) => status == *failing,
            _ => false,
        }
    }

    /// Whether it counts as a failure for the latency and error-rate figures (without outlier
    /// settings): no answer, or a 5xx that says the target is in trouble.
    fn is_failure_by_default(self) -> bool {
        match self {
            CallOutcome::Status(status) => matches!(status, 500 | 502 | 503 | 504),
            _ => true,
        }
    }
}

/// Which targets may take a request now; rebuilt when anything it depends on changes.
#[derive(Debug)]
struct Snapshot {
    /// `UpstreamState::changes` when it was built.
    changes: u64,
    /// Rebuild at this time (an ejection or a slow start ends); `u64::MAX`: no deadline.
    valid_until: Millis,
    eligible: Vec<usize>,
    mask: Vec<bool>,
    /// Any eligible target is in slow start.
    ramping: bool,
    /// Largest configured (scaled) weight among the eligible: a bound of their effective ones.
    max_weight: u32,
    /// Distinct per snapshot of this group (never 0): the balancer may cache per id.
    id: u64,
    /// Nothing was usable and `panic = "spread"` let every target in.
    panicking: bool,
}

/// Scale of effective weights, so that slow start can give a fraction of a weight of 1.
const WEIGHT_SCALE: u32 = 100;
/// A target in slow start gets at least this share of its weight.
const SLOW_START_FLOOR: f64 = 0.1;

/// An upstream ready to serve.
#[derive(Debug)]
pub struct UpstreamGroup {
    /// The upstream's name.
    pub name: Arc<str>,
    /// Targets in config order.
    pub targets: Vec<Target>,
    /// The balancer.
    pub balancer: Balancer,
    /// The config's name of the algorithm.
    pub balance: Balance,
    /// Where `consistent_hash` and `ip_hash` find the request's key.
    pub hash_key: Option<HashKey>,
    state: Arc<UpstreamState>,
    clock: Clock,
    snapshot: ArcSwap<Snapshot>,
    /// Snapshots built so far (their ids).
    snapshots: AtomicU64,
    rebuilding: Mutex<()>,
    failover_threshold: f64,
    panic: PanicMode,
    slow_start: Duration,
    outlier: Option<OutlierSettings>,
    /// Protocol to the targets.
    pub protocol: UpstreamProtocol,
    /// Counts failed connects.
    pub connect_errors: Counter,
    /// The upstream's circuit breaker, and the statuses that count as its failures.
    pub circuit: Option<Circuit>,
    /// The upstream's bulkhead.
    pub bulkhead: Option<Arc<Bulkhead>>,
}

/// An upstream's circuit breaker as the proxy uses it.
#[derive(Debug)]
pub struct Circuit {
    /// The breaker (shared across reloads while its settings stay).
    pub breaker: Arc<Breaker>,
    /// Statuses that count as failures; timeouts, connect errors and broken answers always do.
    pub failure_statuses: Vec<u16>,
}

/// The breaker settings of `config`.
fn breaker_config(config: &sekisho_config::CircuitBreaker) -> BreakerConfig {
    let window = match config.window_calls {
        Some(calls) => Window::Calls(calls.0),
        None => {
            let window = config.window.get();
            let seconds = window.as_secs() + u64::from(window.subsec_nanos() > 0);
            Window::Time(u32::try_from(seconds).unwrap_or(u32::MAX).max(1))
        }
    };
    BreakerConfig {
        window,
        minimum_calls: config.minimum_calls.0,
        failure_rate_threshold: config.failure_rate_threshold.0,
        slow_call_threshold: config.slow_call_threshold.get(),
        slow_call_rate_threshold: config.slow_call_rate_threshold.0,
        open_for: config.open_for.get(),
        open_for_multiplier: config.open_for_multiplier,
        max_open_for: config.max_open_for.map(|d| d.get()),
        half_open_calls: config.half_open_calls.0,
        consecutive_failures: config.consecutive_failures.map(|n| n.0),
    }
}

/// Why no target could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoTarget;

impl UpstreamGroup {
    /// Builds the group; addresses were checked by the config.
    pub fn new(
        name: &str,
        upstream: &Upstream,
        client: UpstreamClient,
        connect_errors: Counter,
        registry: &StateRegistry,
    ) -> Result<Self, String> {
        let configured = upstream.targets.get_ref();
        let addresses: Vec<&str> = configured.iter().map(|t| t.address.as_str()).collect();
        let (state, states) = registry.upstream(name, &addresses);
        let mut targets = Vec::with_capacity(configured.len());
        for (target, state) in configured.iter().zip(states) {
            let authority: Authority = target
                .address
                .parse()
                .map_err(|e| format!("target `{}`: {e}", target.address))?;
            targets.push(Target {
                address: Arc::from(target.address.as_str()),
                conn: client.for_target(&authority),
                weight: target.weight,
                backup: target.backup,
                state,
            });
        }
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let balancer = Balancer::new(algorithm_of(upstream.balance), &addresses, &weights);
        let hash_key = match upstream.balance {
            Balance::ConsistentHash => Some(upstream.hash_key.clone().unwrap_or(HashKey::ClientIp)),
            Balance::IpHash => Some(HashKey::ClientIp),
            _ => None,
        };
        let outlier = upstream.outlier.as_ref().map(|o| OutlierSettings {
            consecutive_failures: o.consecutive_failures.0,
            base_ejection: o.base_ejection_time.get(),
            max_ejection: o.max_ejection_time.get(),
            max_ejection_percent: o.max_ejection_percent.0,
            interval: o.interval.get(),
            failure_rate_margin: o.failure_rate_margin.0,
            minimum_requests: u64::from(o.failure_rate_minimum_requests.0),
            failure_on: o.failure_on.clone(),
        });
        let slow_start = upstream
            .slow_start
            .or_else(|| upstream.outlier.as_ref().map(|o| o.slow_start))
            .map_or(Duration::ZERO, |d| d.0);
        let circuit = upstream.circuit_breaker.as_ref().map(|config| Circuit {
            breaker: state.breaker(breaker_config(config)),
            failure_statuses: config.failure_statuses.iter().map(|s| s.0).collect(),
        });
        let bulkhead = upstream
            .bulkhead
            .as_ref()
            .map(|config| state.bulkhead(config));
        let group = Self {
            circuit,
            bulkhead,
            name: Arc::from(name),
            targets,
            balancer,
            balance: upstream.balance,
            hash_key,
            clock: registry.clock(),
            snapshot: ArcSwap::from_pointee(Snapshot {
                changes: u64::MAX,
                valid_until: 0,
                eligible: Vec::new(),
                mask: Vec::new(),
                ramping: false,
                max_weight: 1,
                id: 1,
                panicking: false,
            }),
            state,
            snapshots: AtomicU64::new(0),
            rebuilding: Mutex::new(()),
            failover_threshold: upstream.failover_threshold.0,
            panic: upstream.panic,
            slow_start,
            outlier,
            protocol: upstream.protocol,
            connect_errors,
        };
        group.rebuild(group.clock.millis(Instant::now()));
        Ok(group)
    }

    /// The state shared across generations.
    pub fn state(&self) -> &Arc<UpstreamState> {
        &self.state
    }

    /// The clock of target state.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The target for a request with `key` (hashed) at `now`, leaving out `excluded` targets
    /// (those a retry already tried).
    pub fn pick(
        &self,
        key: Option<u64>,
        now: Instant,
        excluded: &[usize],
    ) -> Result<usize, NoTarget> {
        let millis = self.clock.millis(now);
        let snapshot = self.current_snapshot(millis);
        let std_now = now.into_std();
        let picked = if excluded.is_empty() {
            let pool = GroupPool {
                group: self,
                eligible: &snapshot.eligible,
                mask: &snapshot.mask,
                ramping: snapshot.ramping,
                max_weight: snapshot.max_weight,
                id: snapshot.id,
                now: millis,
            };
            let mut picked = self.balancer.pick(&pool, key, std_now);
            // Round robin ignores weights: a target in slow start is skipped in proportion to
            // how far it still has to ramp.
            if snapshot.ramping && self.balance == Balance::RoundRobin {
                if let Some(target) = picked {
                    let share = pool.ramp_share(target);
                    if share < 1.0 && fastrand::f64() >= share {
                        picked = self.balancer.pick(&pool, key, std_now).or(picked);
                    }
                }
            }
            picked
        } else {
            // A retry after failed connects: eligibility again, without the failed targets, so
            // that losing primaries can bring the backups in for this very request.
            let (eligible, _) = self.eligible_set(millis, excluded);
            let mask = mask_of(self.targets.len(), &eligible);
            let pool = GroupPool {
                group: self,
                eligible: &eligible,
                mask: &mask,
                ramping: snapshot.ramping,
                max_weight: snapshot.max_weight,
                id: 0,
                now: millis,
            };
            self.balancer.pick(&pool, key, std_now)
        };
        let target = picked.ok_or(NoTarget)?;
        if let Some(chosen) = self.targets.get(target) {
            chosen.state.picks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(target)
    }

    /// Whether no target is usable and `panic = "spread"` is spreading over all of them.
    pub fn is_panicking(&self) -> bool {
        self.current_snapshot(self.clock.millis(Instant::now()))
            .panicking
    }

    fn current_snapshot(&self, now: Millis) -> arc_swap::Guard<Arc<Snapshot>> {
        let snapshot = self.snapshot.load();
        let changes = self.state.changes.load(Ordering::Acquire);
        if snapshot.changes == changes && now < snapshot.valid_until {
            return snapshot;
        }
        drop(snapshot);
        self.rebuild(now);
        self.snapshot.load()
    }

    /// Recomputes which targets are eligible. One thread at a time; others use the snapshot in
    /// force meanwhile.
    fn rebuild(&self, now: Millis) {
        let Ok(_rebuilding) = self.rebuilding.try_lock() else {
            return;
        };
        // Read the counter first: a change after this point makes the next pick rebuild again.
        let changes = self.state.changes.load(Ordering::Acquire);
        let mut valid_until = u64::MAX;
        for target in &self.targets {
            let until = target.state.ejected_until.load(Ordering::Relaxed);
            if until != 0 && until <= now {
                // The ejection ran out: back in service, ramping up.
                if target.state.end_ejection(until, until) {
                    tracing::info!(upstream = %self.name, target = %target.address, "ejection ended; target back in service");
                }
            } else if until > now {
                valid_until = valid_until.min(until);
            }
        }
        let (eligible, panicking) = self.eligible_set(now, &[]);
        let mask = mask_of(self.targets.len(), &eligible);
        let mut ramping = false;
        if !self.slow_start.is_zero() {
            let ramp = self.slow_start.as_millis() as u64;
            for &i in &eligible {
                let returned = self.targets[i].state.returned_at.load(Ordering::Relaxed);
                if returned != 0 && now < returned + ramp {
                    ramping = true;
                    valid_until = valid_until.min(returned + ramp);
                }
            }
        }
        let max_weight = eligible
            .iter()
            .map(|&i| self.targets[i].weight.saturating_mul(WEIGHT_SCALE))
            .max()
            .unwrap_or(1);
        self.snapshot.store(Arc::new(Snapshot {
            changes,
            valid_until,
            eligible,
            mask,
            ramping,
            max_weight,
            id: self.snapshots.fetch_add(1, Ordering::Relaxed) + 2,
            panicking,
        }));
    }

    /// Which targets may be picked at `now`, with `excluded` ones (whose connect just failed)
    /// counted as unusable: the usable primaries, plus the usable backups when too few
    /// primaries are usable; every target in `panic = "spread"` when nothing is usable.
    fn eligible_set(&self, now: Millis, excluded: &[usize]) -> (Vec<usize>, bool) {
        let usable = |i: usize| {
            let state = &self.targets[i].state;
            state.is_healthy() && !state.is_ejected(now) && !excluded.contains(&i)
        };
        let primaries = self.targets.iter().filter(|t| !t.backup).count();
        let mut eligible: Vec<usize> = (0..self.targets.len())
            .filter(|&i| !self.targets[i].backup && usable(i))
            .collect();
        let share = if primaries == 0 {
            0.0
        } else {
            eligible.len() as f64 / primaries as f64
        };
        if share < self.failover_threshold || eligible.is_empty() {
            eligible
                .extend((0..self.targets.len()).filter(|&i| self.targets[i].backup && usable(i)));
            eligible.sort_unstable();
        }
        if eligible.is_empty() && self.panic == PanicMode::Spread {
            let all: Vec<usize> = (0..self.targets.len())
                .filter(|i| !excluded.contains(i))
                .collect();
            return (all, true);
        }
        (eligible, false)
    }

    /// A call to `target` begins: counted in flight until the guard drops.
    pub fn begin(&self, target: usize) -> Option<InFlight> {
        let state = &self.targets.get(target)?.state;
        state.load.begin();
        Some(InFlight {
            state: Arc::clone(state),
        })
    }

    /// Records how a call to `target` ended (at the response head, or in failure), for the
    /// balancers' figures and outlier detection.
    pub fn record(&self, target: usize, outcome: CallOutcome, latency: Duration, now: Instant) {
        let Some(chosen) = self.targets.get(target) else {
            return;
        };
        let state = &chosen.state;
        let failed = match &self.outlier {
            Some(outlier) => {
                outlier.failure_on.iter().any(|kind| outcome.matches(kind))
                    || outcome == CallOutcome::Broken
            }
            None => outcome.is_failure_by_default(),
        };
        state.load.observe(latency, failed, now.into_std());
        let Some(outlier) = &self.outlier else {
            return;
        };
        let millis = self.clock.millis(now);
        state.window_requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            state.window_failures.fetch_add(1, Ordering::Relaxed);
            let in_a_row = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if in_a_row >= outlier.consecutive_failures && !state.is_ejected(millis) {
                self.eject(target, outlier, millis, "consecutive failures");
            }
        } else {
            state.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let window_end = self.state.window_end.load(Ordering::Relaxed);
        if window_end == 0 {
            let _ = self.state.window_end.compare_exchange(
                0,
                millis + outlier.interval.as_millis() as u64,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else if millis >= window_end
            && self
                .state
                .window_end
                .compare_exchange(
                    window_end,
                    millis + outlier.interval.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.close_window(outlier, millis);
        }
    }

    /// The end of an outlier window: eject targets whose failure rate stands out from their
    /// peers', and let the ejection level of well-behaved targets decay.
    fn close_window(&self, outlier: &OutlierSettings, now: Millis) {
        let figures: Vec<(u64, u64)> = self
            .targets
            .iter()
            .map(|t| {
                (
                    t.state.window_requests.swap(0, Ordering::Relaxed),
                    t.state.window_failures.swap(0, Ordering::Relaxed),
                )
            })
            .collect();
        for (target, &(_, failures)) in self.targets.iter().zip(&figures) {
            if failures == 0 && !target.state.is_ejected(now) {
                let _ = target.state.ejection_level.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |level| level.checked_sub(1),
                );
            }
        }
        if outlier.failure_rate_margin >= 1.0 {
            return;
        }
        let judged: Vec<(usize, f64)> = figures
            .iter()
            .enumerate()
            .filter(|(_, (requests, _))| *requests >= outlier.minimum_requests)
            .map(|(i, (requests, failures))| (i, *failures as f64 / *requests as f64))
            .collect();
        if judged.len() < 2 {
            return;
        }
        let total: f64 = judged.iter().map(|(_, rate)| rate).sum();
        for &(target, rate) in &judged {
            let peers_mean = (total - rate) / (judged.len() - 1) as f64;
            if rate - peers_mean > outlier.failure_rate_margin
                && !self.targets[target].state.is_ejected(now)
            {
                self.eject(
                    target,
                    outlier,
                    now,
                    "failure rate stands out from its peers",
                );
            }
        }
    }

    fn eject(&self, target: usize, outlier: &OutlierSettings, now: Millis, reason: &str) {
        let ejected = self
            .targets
            .iter()
            .filter(|t| t.state.is_ejected(now))
            .count();
        let allowed = (ejected + 1) as f64 * 100.0
            <= outlier.max_ejection_percent * self.targets.len() as f64;
        let chosen = &self.targets[target];
        if !allowed {
            tracing::debug!(upstream = %self.name, target = %chosen.address, reason, "not ejected: max_ejection_percent reached");
            return;
        }
        let level = chosen.state.ejection_level.fetch_add(1, Ordering::Relaxed) + 1;
        let length = outlier
            .base_ejection
            .saturating_mul(level)
            .min(outlier.max_ejection);
        let until = now + length.as_millis() as u64;
        chosen.state.ejected_until.store(until, Ordering::Relaxed);
        chosen.state.ejections_total.fetch_add(1, Ordering::Relaxed);
        chosen
            .state
            .consecutive_failures
            .store(0, Ordering::Relaxed);
        self.state.changed();
        tracing::warn!(
            upstream = %self.name,
            target = %chosen.address,
            reason,
            ejection_ms = length.as_millis() as u64,
            times = level,
            "target ejected"
        );
    }

    /// A snapshot of the targets for the admin API.
    pub fn view(&self) -> Vec<TargetFigures> {
        let now = Instant::now();
        let millis = self.clock.millis(now);
        let snapshot = self.current_snapshot(millis);
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ejected_until = t.state.ejected_until.load(Ordering::Relaxed);
                TargetFigures {
                    eligible: snapshot.mask.get(i).copied().unwrap_or(false),
                    healthy: t.state.is_healthy(),
                    ejected: ejected_until > millis,
                    ejected_for_ms: ejected_until.saturating_sub(millis),
                    in_flight: t.state.load.in_flight(),
                    latency_ms: t.state.load.latency(now.into_std()).as_secs_f64() * 1000.0,
                    error_rate: t.state.load.error_rate(),
                    ejections: t.state.ejections(),
                    picks: t.state.picks(),
                    last_check: t.state.last_check(),
                }
            })
            .collect()
    }
}

/// Live figures of one target, for the admin API and metrics.
#[derive(Debug, Clone)]
pub struct TargetFigures {
    /// May take requests now.
    pub eligible: bool,
    /// Passing the active checks.
    pub healthy: bool,
    /// Ejected by outlier detection.
    pub ejected: bool,
    /// Time left of the ejection.
    pub ejected_for_ms: u64,
    /// Requests in flight.
    pub in_flight: u32,
    /// Peak-EWMA latency estimate.
    pub latency_ms: f64,
    /// Recent error rate.
    pub error_rate: f64,
    /// Times ejected.
    pub ejections: u64,
    /// Times picked.
    pub picks: u64,
    /// The last active check.
    pub last_check: Option<CheckRecord>,
}

/// Counts a call in flight on its target until dropped.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<TargetState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.load.release();
    }
}

/// `eligible` as one flag per target.
fn mask_of(targets: usize, eligible: &[usize]) -> Vec<bool> {
    let mut mask = vec![false; targets];
    for &target in eligible {
        mask[target] = true;
    }
    mask
}

/// The balancer's view of a group during one pick.
struct GroupPool<'a> {
    group: &'a UpstreamGroup,
    eligible: &'a [usize],
    mask: &'a [bool],
    ramping: bool,
    max_weight: u32,
    /// The snapshot's id, or 0 for an ad-hoc set (a retry's).
    id: u64,
    now: Millis,
}

impl GroupPool<'_> {
    /// Share of its weight a target has now: 1 unless it is in slow start.
    fn ramp_share(&self, target: usize) -> f64 {
        if !self.ramping {
            return 1.0;
        }
        let Some(t) = self.group.targets.get(target) else {
            return 1.0;
        };
        let returned = t.state.returned_at.load(Ordering::Relaxed);
        if returned == 0 {
            return 1.0;
        }
        let ramp = self.group.slow_start.as_millis() as f64;
        let elapsed = self.now.saturating_sub(returned) as f64;
        (elapsed / ramp).clamp(SLOW_START_FLOOR, 1.0)
    }
}

impl Pool for GroupPool<'_> {
    fn eligible(&self) -> &[usize] {
        self.eligible
    }

    fn is_eligible(&self, target: usize) -> bool {
        self.mask.get(target).copied().unwrap_or(false)
    }

    fn weight(&self, target: usize) -> u32 {
        let weight = self
            .group
            .targets
            .get(target)
            .map_or(1, |t| t.weight)
            .saturating_mul(WEIGHT_SCALE);
        if !self.ramping {
            return weight;
        }
        ((f64::from(weight) * self.ramp_share(target)).ceil() as u32).max(1)
    }

    fn load(&self, target: usize) -> &TargetLoad {
        &self.group.targets[target].state.load
    }

    fn max_weight(&self) -> u32 {
        self.max_weight
    }

    fn weights_as_configured(&self) -> bool {
        !self.ramping
    }

    fn set_id(&self) -> u64 {
        // While a target ramps its weight changes with every pick: nothing to cache.
        if self.ramping {
            0
        } else {
            self.id
        }
    }
}

fn algorithm_of(balance: Balance) -> Algorithm {
    match balance {
        Balance::RoundRobin => Algorithm::RoundRobin,
        Balance::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        Balance::LeastConnections => Algorithm::LeastConnections,
        Balance::LeastResponseTime => Algorithm::LeastResponseTime,
        Balance::IpHash => Algorithm::IpHash,
        Balance::ConsistentHash => Algorithm::ConsistentHash,
        Balance::WeightedRandom => Algorithm::WeightedRandom,
    }
}

/// The name of `balance` as the config spells it.
pub fn balance_name(balance: Balance) -> &'static str {
    match balance {
        Balance::RoundRobin => "round_robin",
        Balance::WeightedRoundRobin => "weighted_round_robin",
        Balance::LeastConnections => "least_connections",
        Balance::LeastResponseTime => "least_response_time",
        Balance::IpHash => "ip_hash",
        Balance::ConsistentHash => "consistent_hash",
        Balance::WeightedRandom => "weighted_random",
    }
}
