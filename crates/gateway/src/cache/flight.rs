//! Concurrent misses of one key make one upstream call: the first request leads a flight
//! ([`Lead`]), the others wait for how it ends ([`FlightEnd`]). With the shared tier, the leader
//! also takes the fill lock, or waits for the entry a leader on another instance is fetching.
//! A flight that stored another variant of a varying response is followed by more flights,
//! for the variants still wanted.

use std::sync::Arc;
use std::time::Duration;

use ::http::header::{self, HeaderName};
use ::http::request::Parts;
use sekisho_store::cache::RedisCache;
use tokio::sync::watch;
use tokio::time::Instant;

use super::entry::{now_ms, Entry};
use super::respond::{respond, status_value, EntryKey};
use super::store::CacheStore;
use super::{Lookup, RouteCache};
use crate::sync::lock;

/// Flights one after another that concurrent misses of a varying response follow (each stores
/// one variant) before the requests still waiting go to the upstream on their own.
const VARIANT_ROUNDS: u32 = 4;

/// One upstream call in progress for a key, and how it ended.
#[derive(Debug)]
pub(super) struct Flight {
    done: watch::Sender<Option<FlightEnd>>,
}

/// The names a response varies on and the generation of its variants (the marker at the
/// primary key).
pub(super) type VaryMarker = (Vec<HeaderName>, u64);

#[derive(Debug, Clone)]
pub(super) enum FlightEnd {
    /// Stored under this key: the primary one, or, when the response varies (the marker given),
    /// the key of the leader's variant.
    Stored(Arc<Entry>, String, Option<VaryMarker>),
    /// Nothing to share: the waiters go to the upstream themselves.
    NotStored,
}

/// Leadership of a flight; ends it as not stored if dropped before [`Lead::end`].
#[derive(Debug)]
pub(super) struct Lead {
    store: Arc<CacheStore>,
    key: String,
    flight: Arc<Flight>,
    lock: Option<(Arc<RedisCache>, String)>,
    ended: bool,
}

impl Lead {
    pub(super) fn end(mut self, end: FlightEnd) {
        self.finish(end);
    }

    fn finish(&mut self, end: FlightEnd) {
        if self.ended {
            return;
        }
        self.ended = true;
        {
            let mut flights = lock(&self.store.flights);
            if flights
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(&self.key);
            }
        }
        self.flight.done.send_replace(Some(end));
        if let Some((l2, token)) = self.lock.take() {
            let key = self.key.clone();
            tokio::spawn(async move {
                let _ = l2.unlock(&key, &token).await;
            });
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.finish(FlightEnd::NotStored);
    }
}

impl RouteCache {
    /// A miss: leads the flight for `primary`, or waits for the one in progress. A flight that
    /// stored another variant of a varying response is followed by a new flight for the
    /// variants still wanted (their requests join it), a few times at most.
    pub(super) async fn collapse(
        self: &Arc<Self>,
        primary: String,
        mut variant_of: Option<VaryMarker>,
        parts: &mut Parts,
        stale: Option<Arc<Entry>>,
        why: &'static str,
        deadline: Instant,
    ) -> Lookup {
        let if_none_match = parts.headers.get(header::IF_NONE_MATCH).cloned();
        let mut round = 0;
        loop {
            let flight = match self.join_or_lead(&primary) {
                Err(mut lead) => {
                    if let Some((entry, key, vary, answer)) =
                        self.wait_elsewhere(&mut lead, parts, deadline).await
                    {
                        lead.end(FlightEnd::Stored(entry, key, vary));
                        return answer;
                    }
                    self.metrics.miss.inc();
                    return Lookup::Fetch(self.fetch(
                        EntryKey {
                            primary,
                            variant_of,
                        },
                        parts,
                        Some(lead),
                        true,
                        stale,
                        why,
                    ));
                }
                Ok(flight) => flight,
            };
            let mut done = flight.done.subscribe();
            let ended = tokio::time::timeout_at(deadline, done.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|end| end.ok().map(|end| end.clone()));
            if let Some(Some(FlightEnd::Stored(entry, key, vary))) = ended {
                // Without Vary the variant key is the primary one.
                if self.variant_key(&primary, vary.as_ref(), &parts.headers) == key {
                    self.metrics.coalesced.inc();
                    let now = now_ms();
                    let status = status_value(format_args!(
                        "fwd={why}; collapsed; ttl={}",
                        entry.ttl_ms(now) / 1000
                    ));
                    let response = respond(&entry, now, &parts.method, if_none_match.as_ref());
                    return Lookup::Hit(response, status);
                }
                if vary.is_some() && round < VARIANT_ROUNDS {
                    // Another variant: the next flight stores this one beside it, under the
                    // same marker.
                    round += 1;
                    variant_of = vary;
                    continue;
                }
            }
            // Not stored, waited too long, or variants beyond the rounds: go to the upstream.
            return self.miss(
                EntryKey {
                    primary,
                    variant_of,
                },
                parts,
                true,
                stale,
                why,
            );
        }
    }

    /// With the shared tier: takes the fill lock, or, when another instance holds it, waits
    /// (polling the shared tier) up to `lock_wait` for its entry.
    async fn wait_elsewhere(
        &self,
        lead: &mut Lead,
        parts: &Parts,
        deadline: Instant,
    ) -> Option<(Arc<Entry>, String, Option<VaryMarker>, Lookup)> {
        let l2 = self.store.l2.load_full()?;
        let token = format!("{:016x}", fastrand::u64(..));
        match l2.lock(&lead.key, &token, self.lock_wait).await {
            Ok(true) => {
                lead.lock = Some((Arc::clone(&l2), token));
                // Another instance may have stored the entry and let the lock go between our
                // miss and our lock: look once more before calling the upstream.
                self.shared_entry(&l2, &lead.key, parts).await
            }
            Ok(false) => {
                let until = deadline.min(Instant::now() + self.lock_wait);
                let mut pause = Duration::from_millis(5);
                while Instant::now() + pause < until {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    if let Some(answer) = self.shared_entry(&l2, &lead.key, parts).await {
                        return Some(answer);
                    }
                }
                None
            }
            Err(_) => None,
        }
    }

    /// A fresh entry another instance stored under `primary` (and the request's variant), as a
    /// collapsed answer.
    async fn shared_entry(
        &self,
        l2: &RedisCache,
        primary: &str,
        parts: &Parts,
    ) -> Option<(Arc<Entry>, String, Option<VaryMarker>, Lookup)> {
        let bytes = l2.get(primary).await.ok()??;
        let found = Arc::new(Entry::decode(&bytes)?);
        let vary = found.vary.clone();
        let (entry, key) = match &vary {
            None => (found, primary.to_owned()),
            Some(_) => {
                let key = self.variant_key(primary, vary.as_ref(), &parts.headers);
                let bytes = l2.get(&key).await.ok()??;
                (Arc::new(Entry::decode(&bytes)?), key)
            }
        };
        let now = now_ms();
        if entry.ttl_ms(now) <= 0 {
            return None;
        }
        self.store.l1_put(&key, Arc::clone(&entry), self.l1_ttl);
        self.metrics.coalesced.inc();
        let status = status_value(format_args!(
            "fwd=uri-miss; collapsed; ttl={}; detail=l2",
            entry.ttl_ms(now) / 1000
        ));
        let inm = parts.headers.get(header::IF_NONE_MATCH);
        let answer = Lookup::Hit(respond(&entry, now, &parts.method, inm), status);
        Some((entry, key, vary, answer))
    }
    /// Joins the flight of `key` (`Ok`) or starts it and leads it (`Err`).
    fn join_or_lead(&self, key: &str) -> Result<Arc<Flight>, Lead> {
        let mut flights = lock(&self.store.flights);
        if let Some(flight) = flights.get(key) {
            return Ok(Arc::clone(flight));
        }
        let flight = Arc::new(Flight {
            done: watch::channel(None).0,
        });
        flights.insert(key.to_owned(), Arc::clone(&flight));
        Err(Lead {
            store: Arc::clone(&self.store),
            key: key.to_owned(),
            flight,
            lock: None,
            ended: false,
        })
    }

    /// Leads a refresh of `key` unless one runs already.
    pub(super) fn try_lead(&self, key: &str) -> Option<Lead> {
        self.join_or_lead(key).err()
    }
}
