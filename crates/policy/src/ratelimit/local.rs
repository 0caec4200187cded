//! The in-process backend: every key's state in memory, sharded, and bounded.
//!
//! [`LocalLimiter`] maps keys (client addresses, API keys, …) to the state of one [`Limit`]'s
//! algorithm. The map is split into [`SHARDS`] shards, each behind its own mutex, chosen by the
//! key's hash: two requests contend only when their keys fall in one shard, and a decision holds
//! the lock for the few nanoseconds of the arithmetic, never across I/O.
//!
//! # Memory bound
//!
//! Keys come from clients, so a flood of distinct keys (spoofed addresses, random API keys) must
//! not grow the map without end. Each shard holds at most `max_keys / SHARDS` keys. When a new
//! key finds its shard full, the shard first forgets every *idle* key — one whose state decides
//! exactly as a fresh one would (a full bucket, an ended window): forgetting it changes no
//! decision. If that frees less than an eighth of the shard, the least recently seen keys are
//! forgotten down to seven eighths. Those keys start again from a full quota the next time they
//! come, so under a flood beyond `max_keys` a client may get more than its limit; the
//! alternative — refusing to track new keys, or refusing their requests — would let the flood
//! lock legitimate clients out. [`LocalLimiter::evicted`] counts the keys forgotten while not
//! idle, so operators can see when `max_keys` is too small. The sweep walks one shard and runs at
//! most once per eighth of a shard's inserts, so its cost per request stays constant.
//!
//! Keys are hashed once per decision with the standard library's SipHash and per-process random
//! keys, so a client cannot choose keys that collide; the hash picks the shard and is the map's
//! key (8 bytes per key instead of a copy of the string).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::{
    Algorithm, Decision, FixedWindow, Gcra, Limit, SlidingWindowCounter, SlidingWindowLog,
    TokenBucket,
};

/// Shards of the key map.
pub const SHARDS: usize = 16;

/// Many keys under one limit, in memory.
#[derive(Debug)]
pub struct LocalLimiter {
    limit: Limit,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    TokenBucket(Keyed<TokenBucket>),
    Gcra(Keyed<Gcra>),
    FixedWindow(Keyed<FixedWindow>),
    SlidingWindowLog(Keyed<SlidingWindowLog>),
    SlidingWindowCounter(Keyed<SlidingWindowCounter>),
}

/// Runs `$body` with `$keyed` bound to the limiter's `Keyed<A>`, whatever `A` is.
macro_rules! each {
    ($kind:expr, $keyed:ident => $body:expr) => {
        match $kind {
            Kind::TokenBucket($keyed) => $body,
            Kind::Gcra($keyed) => $body,
            Kind::FixedWindow($keyed) => $body,
            Kind::SlidingWindowLog($keyed) => $body,
            Kind::SlidingWindowCounter($keyed) => $body,
        }
    };
}

impl LocalLimiter {
    /// Keys under `limit`, at most about `max_keys` of them remembered at once.
    pub fn new(limit: Limit, max_keys: usize) -> Self {
        let per_shard = (max_keys / SHARDS).max(1);
        let kind = match limit {
            Limit::TokenBucket {
                capacity,
                refill_per_second,
            } => Kind::TokenBucket(Keyed::new(
                TokenBucket::new(capacity, refill_per_second),
                per_shard,
            )),
            Limit::Gcra { burst, per_second } => {
                Kind::Gcra(Keyed::new(Gcra::new(burst, per_second), per_shard))
            }
            Limit::FixedWindow { limit, window } => {
                Kind::FixedWindow(Keyed::new(FixedWindow::new(limit, window), per_shard))
            }
            Limit::SlidingWindowLog { limit, window } => {
                Kind::SlidingWindowLog(Keyed::new(SlidingWindowLog::new(limit, window), per_shard))
            }
            Limit::SlidingWindowCounter { limit, window } => Kind::SlidingWindowCounter(
                Keyed::new(SlidingWindowCounter::new(limit, window), per_shard),
            ),
        };
        Self { limit, kind }
    }

    /// The limit this limiter enforces.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Decides a request of `cost` units for `key` at `now` (nanoseconds of the caller's
    /// monotonic clock).
    pub fn decide(&self, key: &str, now: u64, cost: u64) -> Decision {
        each!(&self.kind, keyed => keyed.decide(key, now, cost))
    }

    /// What `key` has left at `now`, without spending anything; `None` for a key not
    /// remembered (it has its whole quota).
    pub fn peek(&self, key: &str, now: u64) -> Option<Decision> {
        each!(&self.kind, keyed => keyed.peek(key, now))
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        each!(&self.kind, keyed => keyed.len())
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys forgotten before they were idle, because their shard was full.
    pub fn evicted(&self) -> u64 {
        each!(&self.kind, keyed => keyed.evicted.load(Ordering::Relaxed))
    }

    /// Forgets every idle key now (the limiter also does this by itself when a shard fills).
    pub fn sweep(&self, now: u64) {
        each!(&self.kind, keyed => keyed.sweep(now))
    }
}

/// Keys of one algorithm.
#[derive(Debug)]
struct Keyed<A: Algorithm> {
    algorithm: A,
    hasher: RandomState,
    shards: Box<[Mutex<Shard<A::State>>]>,
    per_shard: usize,
    evicted: AtomicU64,
}

#[derive(Debug)]
struct Shard<S> {
    /// By the key's 64-bit keyed hash (see [`Keyed::hash`]).
    keys: HashMap<u64, Entry<S>, BuildHasherDefault<Prehashed>>,
}

#[derive(Debug)]
struct Entry<S> {
    state: S,
    /// When the key was last decided.
    seen: u64,
}

impl<A: Algorithm> Keyed<A> {
    fn new(algorithm: A, per_shard: usize) -> Self {
        Self::with_shards(algorithm, SHARDS, per_shard)
    }

    fn with_shards(algorithm: A, shards: usize, per_shard: usize) -> Self {
        Self {
            algorithm,
            hasher: RandomState::new(),
            shards: (0..shards.max(1))
                .map(|_| {
                    Mutex::new(Shard {
                        keys: HashMap::default(),
                    })
                })
                .collect(),
            per_shard,
            evicted: AtomicU64::new(0),
        }
    }

    /// The key's hash: SipHash-1-3 with this process's random keys, computed once per
    /// decision. The map is keyed by it (no copy of the key string is kept): two keys with one
    /// hash would share a state, which for 100 000 live keys happens with probability 3 × 10^-10,
    /// and a client cannot aim for it without the secret keys.
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard<A::State>> {
        // Bits the map does not use for its buckets (low) or tags (top seven).
        let index = ((hash >> 32) as usize) % self.shards.len();
        lock(&self.shards[index])
    }

    /// Forgets the keys of `shard` whose state decides as a fresh one would.
    fn forget_idle(&self, shard: &mut Shard<A::State>, now: u64) {
        let algorithm = &self.algorithm;
        shard
            .keys
            .retain(|_, entry| !algorithm.is_idle(&entry.state, now));
    }

    fn decide(&self, key: &str, now: u64, cost: u64) -> Decision {
        let hash = self.hash(key);
        let mut shard = self.shard(hash);
        if let Some(entry) = shard.keys.get_mut(&hash) {
            entry.seen = now;
            return self.algorithm.decide(&mut entry.state, now, cost);
        }
        let mut state = self.algorithm.fresh(now);
        let decision = self.algorithm.decide(&mut state, now, cost);
        if self.algorithm.is_idle(&state, now) {
            // Nothing to remember (a refusal of a fresh key, or a cost of 0).
            return decision;
        }
        if shard.keys.len() >= self.per_shard {
            self.make_room(&mut shard, now);
        }
        shard.keys.insert(hash, Entry { state, seen: now });
        decision
    }

    fn peek(&self, key: &str, now: u64) -> Option<Decision> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let entry = shard.keys.get(&hash)?;
        let mut state = entry.state.clone();
        Some(self.algorithm.decide(&mut state, now, 0))
    }

    fn make_room(&self, shard: &mut Shard<A::State>, now: u64) {
        self.forget_idle(shard, now);
        let keep = self.per_shard - self.per_shard.div_ceil(8);
        if shard.keys.len() <= keep {
            return;
        }
        // Forget the least recently seen down to `keep`.
        let mut seen: Vec<u64> = shard.keys.values().map(|e| e.seen).collect();
        let drop = seen.len() - keep;
        let (_, &mut threshold, _) = seen.select_nth_unstable(drop - 1);
        let before = shard.keys.len();
        shard.keys.retain(|_, entry| entry.seen > threshold);
        self.evicted
            .fetch_add((before - shard.keys.len()) as u64, Ordering::Relaxed);
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).keys.len()).sum()
    }

    fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            self.forget_idle(&mut lock(shard), now);
        }
    }
}

/// A shard, locked. A panic while holding one cannot leave a state half-written in a way that
/// matters more than losing the limiter would: keep serving.
fn lock<S>(shard: &Mutex<Shard<S>>) -> MutexGuard<'_, Shard<S>> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The map's hasher: its keys are already hashes.
#[derive(Debug, Default, Clone, Copy)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach this hasher; fold anything else in rather than panic.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn every_limit() -> Vec<Limit> {
        let window = Duration::from_secs(1);
        vec![
            Limit::TokenBucket {
                capacity: 3,
                refill_per_second: 3.0,
            },
            Limit::Gcra {
                burst: 3,
                per_second: 3.0,
            },
            Limit::FixedWindow { limit: 3, window },
            Limit::SlidingWindowLog { limit: 3, window },
            Limit::SlidingWindowCounter { limit: 3, window },
        ]
    }

    #[test]
    fn keys_are_limited_apart() {
        for limit in every_limit() {
            let limiter = LocalLimiter::new(limit, 1000);
            for _ in 0..3 {
                assert!(limiter.decide("a", 0, 1).allowed, "{limit:?}");
            }
            assert!(!limiter.decide("a", 0, 1).allowed, "{limit:?}");
            assert!(limiter.decide("b", 0, 1).allowed, "{limit:?}");
            assert_eq!(limiter.len(), 2);
            let peeked = limiter.peek("a", 0).expect("a is remembered");
            assert_eq!(peeked.remaining, 0);
            assert!(limiter.peek("c", 0).is_none());
            assert!(!limiter.decide("a", 0, 1).allowed, "peek spent nothing");
        }
    }

    #[test]
    fn idle_keys_are_swept() {
        for limit in every_limit() {
            let limiter = LocalLimiter::new(limit, 1000);
            limiter.decide("a", 0, 1);
            limiter.sweep(0);
            assert_eq!(limiter.len(), 1, "{limit:?}: not idle yet");
            limiter.sweep(3_000_000_000);
            assert!(limiter.is_empty(), "{limit:?}: idle after 3 s");
        }
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_bound() {
        for limit in every_limit() {
            let max_keys = 1024;
            let limiter = LocalLimiter::new(limit, max_keys);
            // 200 000 distinct keys within a millisecond: none of them idle.
            for i in 0..200_000u64 {
                let key = format!("flood-{i}");
                assert!(limiter.decide(&key, i, 1).allowed);
            }
            assert!(
                limiter.len() <= max_keys,
                "{limit:?}: {} keys",
                limiter.len()
            );
            assert!(limiter.evicted() >= 200_000 - max_keys as u64);
            // A client seen a moment ago is still remembered and still limited.
            let now = 200_000;
            for _ in 0..3 {
                limiter.decide("steady", now, 1);
            }
            assert!(!limiter.decide("steady", now, 1).allowed, "{limit:?}");
        }
    }

    #[test]
    fn idle_keys_go_first_when_a_shard_is_full() {
        let window = Duration::from_secs(1);
        let keyed = Keyed::with_shards(FixedWindow::new(3, window), 1, 8);
        for i in 0..8 {
            keyed.decide(&format!("old-{i}"), 0, 1);
        }
        // A second later every old key is idle: new ones take their place, nothing evicted.
        for i in 0..8 {
            keyed.decide(&format!("new-{i}"), 1_000_000_000 + i, 1);
        }
        assert_eq!(keyed.len(), 8);
        assert_eq!(keyed.evicted.load(Ordering::Relaxed), 0);
        // Now the shard is full of live keys: the least recently seen one makes room.
        keyed.decide("newest", 1_000_000_100, 1);
        assert_eq!(keyed.len(), 8);
        assert_eq!(keyed.evicted.load(Ordering::Relaxed), 1);
        assert!(keyed.peek("new-0", 1_000_000_100).is_none());
        assert!(keyed.peek("new-1", 1_000_000_100).is_some());
    }

    #[test]
    fn a_refused_fresh_key_is_not_remembered() {
        let limiter = LocalLimiter::new(
            Limit::TokenBucket {
                capacity: 2,
                refill_per_second: 1.0,
            },
            100,
        );
        assert!(!limiter.decide("big", 0, 5).allowed);
        assert!(limiter.is_empty());
    }

    #[test]
    fn threads_share_one_limit_exactly() {
        let limiter = Arc::new(LocalLimiter::new(
            Limit::FixedWindow {
                limit: 1000,
                window: Duration::from_secs(3600),
            },
            100,
        ));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| limiter.decide("shared", 1, 1).allowed)
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads
            .into_iter()
            .map(|t| t.join().expect("no panic"))
            .sum();
        assert_eq!(admitted, 1000);
    }
}
