//! The in-process session cache (the seeds' L1 `session`: 50 000 entries, 300 s): validated
//! sessions by their access token's own 64 bytes ([`crate::token::CacheKey`]: a hit decodes
//! and hashes nothing).
//!
//! Why not moka, as for the other in-process caches: this one is read on every request of a
//! route with `auth`, and a moka `get` records the access for its eviction policy (a
//! read buffer, a frequency sketch, the clock) — about a thousand instructions, a third of what
//! validating a session cost. Here a read is a shard's read lock and one probe of a hash map
//! whose hash is the key's first eight bytes (the key is 256 random bits, made by us: nothing to
//! protect against flooding; a key a client invents is only ever looked up, and an entry is
//! made only for a session the store validated).
//!
//! What it gives up: eviction is not by recency. An entry lives until its deadline (the token's
//! end, at most 300 s after it was cached) or until revoked; a full shard first drops its expired
//! entries, then arbitrary ones — a dropped session costs one look-up in the session store.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use sekisho_db::now_millis;

use crate::token::{cache_shard, CacheKey};
use crate::Cached;

/// Shards, so that writes (a new session, a revocation) do not stop every reader.
const SHARDS: usize = 16;

/// An access token's 64 bytes, hashed as its first eight (eight hex digits: 32 random bits,
/// spread over the whole word by a multiplication, so the map's control bits vary too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key(CacheKey);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
}

/// Passes the key's own (random) bits through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; anything else is folded in, for correctness.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 ^= value;
    }
}

/// One cached session and when it must be looked up again.
#[derive(Debug)]
struct Entry {
    cached: Arc<Cached>,
    /// The token's end, or `ttl` after caching, whichever first: on the monotonic clock, so
    /// that a read compares with the request's own start and reads no clock of its own.
    until: Instant,
}

type Shard = HashMap<Key, Entry, BuildHasherDefault<PassThrough>>;

/// The in-process sessions. Clones share the same entries.
#[derive(Debug, Clone)]
pub(crate) struct SessionCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: Vec<RwLock<Shard>>,
    per_shard: usize,
    ttl_ms: i64,
}

impl SessionCache {
    /// At most `capacity` sessions, each at most `ttl` (and never past its token's end).
    pub(crate) fn new(capacity: usize, ttl: std::time::Duration) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
                per_shard,
                ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            }),
        }
    }

    fn shard(&self, key: &CacheKey) -> &RwLock<Shard> {
        // The last digit picks the shard, the first eight make the hash: independent bits.
        &self.inner.shards[cache_shard(key) % SHARDS]
    }

    /// The session of `key`, if cached and live at `now`.
    pub(crate) fn get(&self, key: &CacheKey, now: Instant) -> Option<Arc<Cached>> {
        let shard = read(self.shard(key));
        let entry = shard.get(&Key(*key))?;
        (entry.until > now).then(|| Arc::clone(&entry.cached))
    }

    /// Caches `cached` under `key`, until its access token ends or `ttl` passes.
    pub(crate) fn insert(&self, key: CacheKey, cached: Arc<Cached>) {
        let left_ms = (cached.access_expires_at - now_millis()).clamp(0, self.inner.ttl_ms);
        let now = Instant::now();
        let until = now + Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
        let mut shard = write(self.shard(&key));
        if shard.len() >= self.inner.per_shard && !shard.contains_key(&Key(key)) {
            shard.retain(|_, entry| entry.until > now);
            if shard.len() >= self.inner.per_shard {
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(Key(key), Entry { cached, until });
    }

    /// Drops the session of `key`; returns it if it was cached.
    pub(crate) fn remove(&self, key: &CacheKey) -> Option<Arc<Cached>> {
        write(self.shard(key))
            .remove(&Key(*key))
            .map(|entry| entry.cached)
    }

    /// Drops every session `drop` picks.
    pub(crate) fn remove_if(&self, drop: impl Fn(&Cached) -> bool) {
        for shard in &self.inner.shards {
            write(shard).retain(|_, entry| !drop(&entry.cached));
        }
    }

    /// Drops everything.
    pub(crate) fn clear(&self) {
        for shard in &self.inner.shards {
            write(shard).clear();
        }
    }

    /// Sessions cached (expired ones not yet dropped included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|shard| read(shard).len())
            .sum()
    }
}

// A panic while a shard was held leaves whole entries behind (each write is one map operation):
// the poison is ignored rather than spread to every request.
fn read(lock: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(lock: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::Identity;

    fn cached(user: i64, session: &str, expires_in_ms: i64) -> Arc<Cached> {
        Arc::new(Cached {
            identity: Arc::new(Identity::new(user, format!("u{user}"), vec![], vec![])),
            session_id: session.to_owned(),
            access_expires_at: now_millis() + expires_in_ms,
        })
    }

    /// A distinct token-like key for `n`, whose shard is `n % 16`.
    fn key(n: u16) -> CacheKey {
        let text = format!("{n:064x}");
        let mut key = [0u8; 64];
        key.copy_from_slice(text.as_bytes());
        key
    }

    #[test]
    fn entries_are_found_until_their_token_ends_and_dropped_on_demand() {
        let cache = SessionCache::new(1_000, Duration::from_secs(300));
        cache.insert(key(1), cached(1, "s1", 60_000));
        cache.insert(key(2), cached(2, "s2", -1));
        cache.insert(key(3), cached(1, "s3", 60_000));
        assert_eq!(
            cache.get(&key(1), Instant::now()).map(|c| c.identity.id),
            Some(1)
        );
        assert!(
            cache.get(&key(2), Instant::now()).is_none(),
            "the token has ended"
        );
        assert!(cache.get(&key(4), Instant::now()).is_none());
        assert_eq!(
            cache.remove(&key(3)).map(|c| c.session_id.clone()),
            Some("s3".into())
        );
        assert!(cache.get(&key(3), Instant::now()).is_none());
        cache.remove_if(|c| c.identity.id == 1);
        assert!(cache.get(&key(1), Instant::now()).is_none());
        cache.insert(key(5), cached(5, "s5", 60_000));
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_ttl_bounds_an_entry_before_its_token_ends() {
        let cache = SessionCache::new(1_000, Duration::ZERO);
        cache.insert(key(1), cached(1, "s1", 60_000));
        assert!(
            cache.get(&key(1), Instant::now()).is_none(),
            "cached for no time at all"
        );
    }

    #[test]
    fn capacity_is_bounded_expired_entries_first() {
        let cache = SessionCache::new(SHARDS * 2, Duration::from_secs(300));
        for n in 0..(SHARDS as u16 * 10) {
            cache.insert(key(n), cached(1, "s", 60_000));
        }
        assert!(cache.len() <= SHARDS * 2, "{} entries", cache.len());
        // A shard full of ended sessions keeps the live one.
        let cache = SessionCache::new(SHARDS, Duration::from_secs(300));
        cache.insert(key(0), cached(1, "old", -1));
        cache.insert(key(SHARDS as u16), cached(1, "new", 60_000));
        assert_eq!(
            cache
                .get(&key(SHARDS as u16), Instant::now())
                .map(|c| c.session_id.clone()),
            Some("new".into())
        );
        assert_eq!(cache.len(), 1);
    }
}
