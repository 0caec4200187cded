//! What the gateway keeps across reloads, by name: each upstream's and target's state, each
//! route's retry budget and adaptive limit, each rate limit's in-process state, the link to
//! Redis and the response cache. A reload builds a new generation from it (`runtime.rs`)
//! and afterwards forgets what the new config no longer names ([`StateRegistry::retain`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sekisho_policy::budget::RetryBudget;
use sekisho_policy::concurrency::{AdaptiveLimit, Settings as ConcurrencySettings};
use sekisho_policy::ratelimit::local::LocalLimiter;
use sekisho_policy::ratelimit::Limit as RateLimitParams;
use tokio::time::Instant;

use crate::cache::CacheStore;
use crate::ratelimit::MAX_LOCAL_KEYS;
use crate::store_link::{StoreLink, StoreStatus};
use crate::sync::lock;
use crate::upstream::UpstreamStates;

/// Everything the gateway keeps across reloads.
#[derive(Debug)]
pub(crate) struct StateRegistry {
    /// Every upstream's and target's state.
    pub upstreams: UpstreamStates,
    /// Each route's retry budget with the settings it was made with (ratio bits, floor).
    budgets: Mutex<HashMap<String, KeptBudget>>,
    /// Each route's adaptive concurrency limit with the settings it was made with.
    limits: Mutex<HashMap<String, (ConcurrencySettings, Arc<AdaptiveLimit>)>>,
    /// Each rate limit's in-process state (by scope) with the limit it was made for.
    rate_limits: Mutex<HashMap<String, (RateLimitParams, Arc<LocalLimiter>)>>,
    /// The link to Redis, kept while `store.redis` stays the same.
    store: Mutex<Option<Arc<StoreLink>>>,
    /// The response cache, kept while its bounds stay the same.
    cache: Mutex<Option<Arc<CacheStore>>>,
}

impl Default for StateRegistry {
    fn default() -> Self {
        Self {
            upstreams: UpstreamStates::default(),
            budgets: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            rate_limits: Mutex::new(HashMap::new()),
            cache: Mutex::new(None),
            store: Mutex::new(None),
        }
    }
}

impl StateRegistry {
    /// The retry budget of `route`: the one it had while its budget settings stay the same, so
    /// that a reload during an outage does not hand out a fresh budget.
    pub(crate) fn retry_budget(
        &self,
        route: &str,
        retry: &sekisho_config::Retry,
    ) -> Arc<RetryBudget> {
        let settings = (retry.budget_ratio.0.to_bits(), retry.budget_min_per_second);
        let mut budgets = lock(&self.budgets);
        match budgets.get(route) {
            Some((kept, budget)) if *kept == settings => Arc::clone(budget),
            _ => {
                let budget = Arc::new(RetryBudget::new(
                    retry.budget_ratio.0,
                    retry.budget_min_per_second,
                    RETRY_BUDGET_WINDOW,
                    Instant::now().into_std(),
                ));
                budgets.insert(route.to_owned(), (settings, Arc::clone(&budget)));
                budget
            }
        }
    }

    /// The adaptive concurrency limit of `route`: the one it had while its settings stay the
    /// same, so that a reload keeps what the limit has learnt (and the calls it counts).
    pub(crate) fn adaptive_limit(
        &self,
        route: &str,
        settings: ConcurrencySettings,
    ) -> Arc<AdaptiveLimit> {
        let mut limits = lock(&self.limits);
        match limits.get(route) {
            Some((kept, limit)) if *kept == settings => Arc::clone(limit),
            _ => {
                let limit = AdaptiveLimit::new(settings, Instant::now().into_std());
                limits.insert(route.to_owned(), (settings, Arc::clone(&limit)));
                limit
            }
        }
    }

    /// The in-process state of the rate limit of `scope`: the same while its limit stays the
    /// same, so a reload does not hand every client a fresh quota.
    pub(crate) fn local_rate_limiter(
        &self,
        scope: &str,
        limit: RateLimitParams,
    ) -> Arc<LocalLimiter> {
        let mut limiters = lock(&self.rate_limits);
        match limiters.get(scope) {
            Some((kept, limiter)) if *kept == limit => Arc::clone(limiter),
            _ => {
                let limiter = Arc::new(LocalLimiter::new(limit, MAX_LOCAL_KEYS));
                limiters.insert(scope.to_owned(), (limit, Arc::clone(&limiter)));
                limiter
            }
        }
    }

    /// The link to the Redis at `url` with `timeout` per decision call: the one already made
    /// while both stay the same.
    pub(crate) fn store_link(&self, url: &str, timeout: Duration) -> Arc<StoreLink> {
        let mut store = lock(&self.store);
        match &*store {
            Some(link) if link.url() == url && link.timeout() == timeout => Arc::clone(link),
            _ => {
                let link = StoreLink::new(url, timeout);
                *store = Some(Arc::clone(&link));
                link
            }
        }
    }

    /// The response cache for `store`'s bounds, shared through Redis when `store.redis` is set.
    pub(crate) fn cache_store(&self, store: &sekisho_config::Store) -> Arc<CacheStore> {
        let (entries, bytes) = (
            u64::from(store.cache_max_entries.0),
            store.cache_max_bytes.0,
        );
        let cache = {
            let mut cache = lock(&self.cache);
            match &*cache {
                Some(kept) if kept.bounds() == (entries, bytes) => Arc::clone(kept),
                _ => {
                    let made = CacheStore::new(entries, bytes);
                    *cache = Some(Arc::clone(&made));
                    made
                }
            }
        };
        match &store.redis {
            Some(url) => cache.attach(self.store_link(url, store.redis_timeout.get())),
            None => cache.detach(),
        }
        cache
    }

    /// The response cache, when a route has one.
    pub(crate) fn cache(&self) -> Option<Arc<CacheStore>> {
        lock(&self.cache).clone()
    }

    /// Whether the Redis link, if there is one, has finished its first attempt to connect.
    pub(crate) fn store_attempted(&self) -> bool {
        lock(&self.store)
            .as_ref()
            .is_none_or(|link| link.attempted())
    }

    /// The Redis link's state, when a limit has used it.
    pub(crate) fn store_status(&self) -> Option<StoreStatus> {
        lock(&self.store).as_ref().map(|link| link.status())
    }

    /// The Redis link in use, if any.
    pub(crate) fn current_store_link(&self) -> Option<Arc<StoreLink>> {
        lock(&self.store).clone()
    }

    /// Forgets upstreams and targets that `config` no longer names.
    pub(crate) fn retain(&self, config: &sekisho_config::Config) {
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
        let wanted =
            (config.store.redis.as_deref()).map(|url| (url, config.store.redis_timeout.get()));
        if !redis_used || store.as_ref().map(|l| (l.url(), l.timeout())) != wanted {
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
        self.upstreams.retain(config);
    }
}

/// A route's retry budget and the settings it was made with (ratio bits, floor).
type KeptBudget = ((u64, u32), Arc<RetryBudget>);

/// The span of requests a retry budget looks back over.
const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);
