//! The link to Redis that every Redis-backed part of the gateway shares (rate limits, the
//! shared cache tier, the instance registry): one connection manager, made in the background on
//! first use (retrying with a growing pause), kept across reloads while `store.redis` stays the
//! same. It also runs this instance's presence heartbeat, which counts the live instances for
//! `on_store_error = "local"`.
//!
//! The URL can carry a password: it is used only to connect; everything shown or logged uses
//! its masked form ([`sekisho_store::redact_url`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use sekisho_store::instances::{instance_id, Presence, PresenceConfig, PresenceTask};
use sekisho_store::ratelimit::{RedisLimiter, DEFAULT_PREFIX};

use crate::sync::lock;

/// How long a call to the shared cache tier may take before the cache treats it as a miss.
const CACHE_TIMEOUT: Duration = Duration::from_millis(100);

/// The connection to Redis that Redis-backed limits share, made on first use and kept.
#[derive(Debug)]
pub(crate) struct StoreLink {
    /// The URL as configured, credentials included: only for connecting.
    url: String,
    /// The URL with its credentials masked: for everything shown or logged.
    shown: String,
    /// The longest wait for each Redis call of a rate-limit decision (`store.redis_timeout`).
    timeout: Duration,
    limiter: ArcSwapOption<RedisLimiter>,
    cache: ArcSwapOption<sekisho_store::cache::RedisCache>,
    presence: Mutex<Option<(Arc<Presence>, PresenceTask)>>,
    connecting: AtomicBool,
    /// The first attempt to connect has ended (either way).
    attempted: AtomicBool,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    errors: AtomicU64,
}

/// What `/health/detailed` says about Redis.
#[derive(Debug, Clone)]
pub struct StoreStatus {
    /// The URL in use, its credentials masked.
    pub url: String,
    /// Whether connected and the last decision reached Redis.
    pub healthy: bool,
    /// Why the last failed one did not.
    pub last_error: Option<String>,
    /// Decisions Redis could not make so far.
    pub errors: u64,
    /// Live gateway instances last counted.
    pub instances: u64,
}

impl StoreLink {
    /// A link to `url`, connecting in the background at once when a runtime is running (else
    /// when a decision first needs it).
    pub(crate) fn new(url: &str, timeout: Duration) -> Arc<Self> {
        let link = Arc::new(Self {
            url: url.to_owned(),
            shown: sekisho_store::redact_url(url),
            timeout,
            limiter: ArcSwapOption::empty(),
            cache: ArcSwapOption::empty(),
            presence: Mutex::new(None),
            connecting: AtomicBool::new(false),
            attempted: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            last_error: Mutex::new(None),
            errors: AtomicU64::new(0),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            link.start_connecting();
        }
        link
    }

    fn start_connecting(self: &Arc<Self>) {
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let link = Arc::clone(self);
            tokio::spawn(async move { link.connect().await });
        }
    }

    /// The shared cache tier, once connected; the first call starts connecting.
    pub(crate) fn redis_cache(self: &Arc<Self>) -> Option<Arc<sekisho_store::cache::RedisCache>> {
        let cache = self.cache.load_full();
        if cache.is_none() {
            self.start_connecting();
        }
        cache
    }

    /// Whether the first attempt to connect has ended, connected or not (starting it, inside a
    /// runtime, if nothing has yet).
    pub(crate) fn attempted(self: &Arc<Self>) -> bool {
        if self.attempted.load(Ordering::Acquire) {
            return true;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            self.start_connecting();
        }
        false
    }

    /// The bound on each Redis call of a rate-limit decision.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The URL as configured (credentials included: compare with it, never show it).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The limiter, once connected; the first call starts connecting in the background.
    pub(crate) fn limiter(self: &Arc<Self>) -> Option<Arc<RedisLimiter>> {
        let limiter = self.limiter.load_full();
        if limiter.is_none() {
            self.start_connecting();
        }
        limiter
    }

    /// Connects (retrying with a growing pause until it succeeds), then starts this instance's
    /// heartbeat. The connection manager reconnects by itself afterwards.
    async fn connect(self: Arc<Self>) {
        let mut pause = Duration::from_millis(100);
        loop {
            match sekisho_store::connect(&self.url).await {
                Ok(connection) => {
                    let presence = Arc::new(Presence::new(
                        connection.clone(),
                        PresenceConfig::new(instance_id()),
                    ));
                    let task = presence.start();
                    *lock(&self.presence) = Some((presence, task));
                    self.cache
                        .store(Some(Arc::new(sekisho_store::cache::RedisCache::new(
                            connection.clone(),
                            sekisho_store::cache::DEFAULT_PREFIX,
                            CACHE_TIMEOUT,
                        ))));
                    self.limiter.store(Some(Arc::new(RedisLimiter::new(
                        connection,
                        DEFAULT_PREFIX,
                        self.timeout,
                    ))));
                    self.healthy.store(true, Ordering::Release);
                    self.attempted.store(true, Ordering::Release);
                    tracing::info!(url = %self.shown, "connected to redis");
                    return;
                }
                Err(error) => {
                    self.failed(&error.to_string());
                    self.attempted.store(true, Ordering::Release);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    pub(crate) fn succeeded(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::warn!(url = %self.shown, "redis answers again: rate limits are shared again");
        }
    }

    pub(crate) fn failed(&self, error: &str) {
        let error = sekisho_store::redact_in(error, &self.url);
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(
                url = %self.shown,
                error,
                "redis cannot be reached: rate limits follow on_store_error"
            );
        }
        *lock(&self.last_error) = Some(error);
    }

    /// Live instances last counted (1 until counted).
    pub(crate) fn instances(&self) -> u64 {
        lock(&self.presence)
            .as_ref()
            .map_or(1, |(presence, _)| presence.instances())
    }

    /// The link's state.
    pub(crate) fn status(&self) -> StoreStatus {
        StoreStatus {
            url: self.shown.clone(),
            healthy: self.healthy.load(Ordering::Acquire),
            last_error: lock(&self.last_error).clone(),
            errors: self.errors.load(Ordering::Relaxed),
            instances: self.instances(),
        }
    }
}
