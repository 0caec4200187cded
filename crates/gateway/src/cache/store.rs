//! The cache every route shares ([`CacheStore`]): the in-process tier (moka), the shared Redis
//! tier it attaches to and detaches from, purges (here, there, and from the other instances
//! through the subscription `listen` keeps), and the figures the admin API shows.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use sekisho_store::cache::RedisCache;

use super::entry::Entry;
use super::flight::Flights;
use crate::sync::lock;

/// The cache every route shares: both tiers, and the flights in progress. Kept across reloads.
pub struct CacheStore {
    l1: moka::sync::Cache<String, L1Value>,
    max_entries: u64,
    max_bytes: u64,
    pub(super) flights: Arc<Flights>,
    pub(super) l2: ArcSwapOption<RedisCache>,
    subscribed: std::sync::atomic::AtomicBool,
    subscriber: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The Redis URL the shared tier is for (set by [`CacheStore::attach`]).
    url: Mutex<Option<String>>,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("entries", &self.l1.entry_count())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct L1Value {
    entry: Arc<Entry>,
    keep: Duration,
}

struct KeepFor;

// moka's `Expiry` names std Instants in its signatures; both are ignored here (an entry's keep
// time does not depend on when it was written).
#[allow(clippy::disallowed_types)]
impl moka::Expiry<String, L1Value> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &L1Value,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.keep)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &L1Value,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep)
    }
}

/// A purge, as the admin API takes it and as it travels between instances.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purge {
    /// One key (and its variants).
    Key(String),
    /// Every key starting with this.
    Prefix(String),
    /// Every entry tagged so.
    Tag(String),
}

/// What the admin API shows of the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_entries: u64,
    pub max_bytes: u64,
    pub shared: bool,
    pub subscribed: bool,
    pub flights: usize,
}

impl CacheStore {
    /// A cache of at most `max_entries` entries and `max_bytes` bytes in process.
    pub fn new(max_entries: u64, max_bytes: u64) -> Arc<Self> {
        let max_entries = max_entries.max(1);
        let max_bytes = max_bytes.max(1);
        // One bound by weight: an entry weighs its bytes, but at least an even share of the
        // byte budget per allowed entry, so neither more than `max_entries` entries nor more
        // than `max_bytes` bytes fit.
        let floor = u32::try_from(max_bytes / max_entries)
            .unwrap_or(u32::MAX)
            .max(1);
        let l1 = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |key: &String, value: &L1Value| {
                let weight = key.len().saturating_add(value.entry.weight());
                u32::try_from(weight).unwrap_or(u32::MAX).max(floor)
            })
            .expire_after(KeepFor)
            .support_invalidation_closures()
            .build();
        Arc::new(Self {
            l1,
            max_entries,
            max_bytes,
            flights: Arc::default(),
            l2: ArcSwapOption::empty(),
            subscribed: std::sync::atomic::AtomicBool::new(false),
            subscriber: Mutex::new(None),
            url: Mutex::new(None),
        })
    }

    /// The bounds it was made with (entries, bytes).
    pub(crate) fn bounds(&self) -> (u64, u64) {
        (self.max_entries, self.max_bytes)
    }

    /// Shares entries through `link`'s Redis as soon as it is connected (now, or from a
    /// background task that waits for it).
    pub(crate) fn attach(self: &Arc<Self>, link: Arc<crate::store_link::StoreLink>) {
        {
            let mut url = lock(&self.url);
            if url.as_deref() == Some(link.url()) {
                return;
            }
            // Another Redis (or none before): forget the old one first.
            *url = Some(link.url().to_owned());
        }
        self.detach_l2();
        if let Some(l2) = link.redis_cache() {
            self.share(l2, link.url());
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let Some(cache) = weak.upgrade() else { return };
                if cache.shared() || lock(&cache.url).as_deref() != Some(link.url()) {
                    return;
                }
                if let Some(l2) = link.redis_cache() {
                    cache.share(l2, link.url());
                    return;
                }
            }
        });
    }

    /// Stops using Redis (the config no longer names one, or names another): entries stay in
    /// process only.
    pub(crate) fn detach(&self) {
        *lock(&self.url) = None;
        self.detach_l2();
    }

    fn detach_l2(&self) {
        self.l2.store(None);
        if let Some(task) = lock(&self.subscriber).take() {
            task.abort();
        }
        self.subscribed
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Shares entries through Redis from now on, and listens there for purges from the other
    /// instances (resubscribing by itself when the connection drops).
    pub(crate) fn share(self: &Arc<Self>, l2: Arc<RedisCache>, url: &str) {
        let channel = l2.channel();
        self.l2.store(Some(l2));
        let mut subscriber = lock(&self.subscriber);
        if subscriber.is_some() {
            return;
        }
        let weak = Arc::downgrade(self);
        let url = url.to_owned();
        *subscriber = Some(tokio::spawn(listen(weak, url, channel)));
    }

    /// Whether the shared tier is in use.
    pub(crate) fn shared(&self) -> bool {
        self.l2.load().is_some()
    }

    /// Figures for the admin API.
    pub(crate) fn stats(&self) -> CacheStats {
        self.l1.run_pending_tasks();
        CacheStats {
            entries: self.l1.entry_count(),
            bytes: self.l1.weighted_size(),
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            shared: self.shared(),
            subscribed: self.subscribed.load(std::sync::atomic::Ordering::Acquire),
            flights: self.flights.len(),
        }
    }

    /// Applies `purge` here and in the shared tier, and tells the other instances. Returns the
    /// entries deleted from the shared tier (0 without one).
    pub(crate) async fn purge(&self, purge: &Purge) -> Result<u64, String> {
        self.purge_local(purge);
        let Some(l2) = self.l2.load_full() else {
            return Ok(0);
        };
        let deleted = match purge {
            Purge::Key(key) => l2.delete(key).await,
            Purge::Prefix(prefix) => l2.delete_prefix(prefix).await,
            Purge::Tag(tag) => l2.delete_tag(tag).await,
        }
        .map_err(|e| e.to_string())?;
        let message = serde_json::to_string(purge).map_err(|e| e.to_string())?;
        l2.publish(&message).await.map_err(|e| e.to_string())?;
        // Answer once every instance has dropped its copies.
        l2.settle().await;
        Ok(deleted)
    }

    /// Drops the matching entries of this instance's tier.
    pub(crate) fn purge_local(&self, purge: &Purge) {
        let purge = purge.clone();
        let _ = self
            .l1
            .invalidate_entries_if(move |key, value| match &purge {
                Purge::Key(wanted) => {
                    key == wanted
                        || key
                            .strip_prefix(wanted.as_str())
                            .is_some_and(|r| r.starts_with('#'))
                }
                Purge::Prefix(prefix) => key.starts_with(prefix.as_str()),
                Purge::Tag(tag) => value.entry.tags.iter().any(|t| t == tag),
            });
        self.l1.run_pending_tasks();
    }

    /// The first keys held in process (for the admin API).
    pub(crate) fn keys(&self, at_most: usize) -> Vec<String> {
        self.l1
            .iter()
            .take(at_most)
            .map(|(key, _)| key.as_ref().clone())
            .collect()
    }

    fn l1_get(&self, key: &str) -> Option<Arc<Entry>> {
        self.l1.get(key).map(|value| value.entry)
    }

    /// Keeps `entry` in process for as long as it is worth keeping; with the shared tier and an
    /// `l1_ttl`, at most `l1_ttl` (the bound on how long a missed purge goes unnoticed: the
    /// instance then takes the entry from the shared tier again, which keeps it for as long as
    /// the origin allowed). Without the shared tier there is no purge to miss, and the entry
    /// stays for its whole freshness (and stale windows).
    pub(super) fn l1_put(&self, key: &str, entry: Arc<Entry>, l1_ttl: Option<Duration>) {
        let mut keep = entry.keep();
        if let (Some(l1_ttl), true) = (l1_ttl, self.shared()) {
            keep = keep.min(l1_ttl);
        }
        self.l1.insert(key.to_owned(), L1Value { entry, keep });
    }

    /// An entry from either tier (L2 hits are copied into L1).
    pub(super) async fn get(
        &self,
        key: &str,
        l1_ttl: Option<Duration>,
    ) -> Option<(Arc<Entry>, Tier)> {
        if let Some(entry) = self.l1_get(key) {
            return Some((entry, Tier::L1));
        }
        let l2 = self.l2.load_full()?;
        let bytes = l2.get(key).await.ok()??;
        let entry = Arc::new(Entry::decode(&bytes)?);
        self.l1_put(key, Arc::clone(&entry), l1_ttl);
        Some((entry, Tier::L2))
    }
}

impl Drop for CacheStore {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.subscriber).take() {
            task.abort();
        }
    }
}

/// Listens for purges until the cache is gone.
async fn listen(cache: Weak<CacheStore>, url: String, channel: String) {
    let mut pause = Duration::from_millis(100);
    loop {
        let on_subscribed = {
            let cache = cache.clone();
            move || {
                if let Some(cache) = cache.upgrade() {
                    cache
                        .subscribed
                        .store(true, std::sync::atomic::Ordering::Release);
                }
            }
        };
        let on_message = {
            let cache = cache.clone();
            move |text: String| {
                let Some(cache) = cache.upgrade() else { return };
                match serde_json::from_str::<Purge>(&text) {
                    Ok(purge) => cache.purge_local(&purge),
                    Err(error) => tracing::warn!(%error, "ignored a cache purge message"),
                }
            }
        };
        let error =
            sekisho_store::cache::subscribe(&url, &channel, on_subscribed, on_message).await;
        let Some(store) = cache.upgrade() else { return };
        store
            .subscribed
            .store(false, std::sync::atomic::Ordering::Release);
        drop(store);
        let error = sekisho_store::redact_in(&error.to_string(), &url);
        tracing::warn!(%error, "cache purge subscription lost; resubscribing");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The tier an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tier {
    L1,
    L2,
}
