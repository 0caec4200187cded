//! The response cache of cached routes (`[routes.cache]`): an in-process tier (L1, moka) in
//! front of a Redis tier (L2) shared by every instance when `store.redis` is set.
//!
//! A request of a cached route goes through [`RouteCache::lookup`], which answers from the cache
//! (a hit, a `304`, a stale answer while one refresh runs) or hands back a [`Fetch`]: go to the
//! upstream, then give the result to [`Fetch::finish`], which stores it, answers the requests
//! that waited for it, or serves a stale copy when the upstream failed. The rules are in
//! [`http`]; the reasons are in docs/cache.md.
//!
//! **Stampede.** Concurrent misses of one key make one upstream call: the first becomes the
//! *leader* of a flight, the others wait for it (bounded by their deadline) and are answered
//! from what it stored (`Cache-Status: …; collapsed`). With Redis, the leader also takes a
//! short fill lock (`SET NX PX`, `lock_wait`); a leader on another instance that finds it taken
//! polls the shared tier until the entry appears or `lock_wait` passes, then goes to the
//! upstream itself rather than wait longer. Fresh entries near their end are refreshed early,
//! with a probability that grows as the end nears (XFetch), and a stale one within
//! `stale_while_revalidate` is served while one background refresh runs.
//!
//! **Files.**
//! - `route.rs`: [`RouteCache`], one route's settings, its keys, and `lookup` (the hits);
//! - `flight.rs`: a flight per key in progress, its leader and how it ended;
//! - `collapse.rs`: the misses of one key collapsed into one flight, the fill lock with another
//!   instance, and the flights that follow for the other variants of a varying response;
//! - `answer.rs`: answers from an entry (`304`s and byte ranges included);
//! - `respond.rs`: `Cache-Status`, and [`Fetch`], whose `finish` stores the upstream's answer
//!   (or the stale entry a `304` confirmed) or serves a stale copy;
//! - `invalidate.rs`: what a successful unsafe request purges;
//! - `store.rs`: [`CacheStore`], both tiers, purges and their subscription, the figures;
//! - [`entry`]: a stored response and its encoding for the shared tier;
//! - [`http`]: the HTTP caching rules.

mod answer;
mod collapse;
mod entry;
mod flight;
mod http;
mod invalidate;
mod respond;
mod route;
mod store;

pub use self::respond::Fetch;
pub(crate) use self::respond::CACHE_STATUS;
pub use self::route::{CacheMetrics, Lookup, RouteCache};
pub use self::store::{CacheStats, CacheStore, Purge};
