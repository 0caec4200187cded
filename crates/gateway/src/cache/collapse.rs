//! Concurrent misses of one key make one upstream call: the first request leads the key's flight
//! (`flight.rs`), the others wait for how it ends. With the shared tier, the leader also takes
//! the fill lock, or waits for the entry a leader on another instance is fetching. A flight that
//! stored another variant of a varying response is followed by more flights, for the variants
//! still wanted.

use std::sync::Arc;
use std::time::Duration;

use ::http::request::Parts;
use sekisho_store::cache::RedisCache;
use tokio::time::Instant;

use super::answer::{respond, Conditional};
use super::entry::{now_ms, Entry};
use super::flight::{FlightEnd, Lead, VaryMarker};
use super::respond::{status_value, EntryKey};
use super::{Lookup, RouteCache};

/// Flights one after another that concurrent misses of a varying response follow (each stores
/// one variant) before the requests still waiting go to the upstream on their own.
const VARIANT_ROUNDS: u32 = 4;

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
        let conditional = Conditional::of(&parts.headers);
        let mut round = 0;
        loop {
            let flight = match self.store.flights.join_or_lead(&primary) {
                Err(mut lead) => {
                    if let Some((entry, key, vary, answer)) =
                        self.wait_elsewhere(&mut lead, parts, deadline).await
                    {
                        lead.end(FlightEnd::Stored(entry, key, vary));
                        return answer;
                    }
                    self.metrics.miss.inc();
                    return Lookup::Fetch(Box::new(self.fetch(
                        EntryKey {
                            primary,
                            variant_of,
                        },
                        parts,
                        Some(lead),
                        true,
                        stale,
                        why,
                    )));
                }
                Ok(flight) => flight,
            };
            if let Some(FlightEnd::Stored(entry, key, vary)) = flight.ended(deadline).await {
                // Without Vary the variant key is the primary one.
                if self.variant_key(&primary, vary.as_ref(), &parts.headers) == key {
                    self.metrics.coalesced.inc();
                    let now = now_ms();
                    let status = status_value(format_args!(
                        "fwd={why}; collapsed; ttl={}",
                        entry.ttl_ms(now) / 1000
                    ));
                    let response = respond(&entry, now, &parts.method, &conditional);
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
        match l2.lock(lead.key(), &token, self.lock_wait).await {
            Ok(true) => {
                lead.hold_fill_lock(Arc::clone(&l2), token);
                // Another instance may have stored the entry and let the lock go between our
                // miss and our lock: look once more before calling the upstream.
                self.shared_entry(&l2, lead.key(), parts, None).await
            }
            Ok(false) => {
                // An entry stored from now on was fetched (or revalidated) by the lock's holder
                // for us, even one stale on arrival (`no-cache`: revalidated on every use).
                let since = now_ms();
                let until = deadline.min(Instant::now() + self.lock_wait);
                let mut pause = Duration::from_millis(5);
                while Instant::now() + pause < until {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    if let Some(answer) =
                        self.shared_entry(&l2, lead.key(), parts, Some(since)).await
                    {
                        return Some(answer);
                    }
                }
                None
            }
            Err(_) => None,
        }
    }

    /// A fresh entry another instance stored under `primary` (and the request's variant), or
    /// one it stored after `since` (ms), as a collapsed answer.
    async fn shared_entry(
        &self,
        l2: &RedisCache,
        primary: &str,
        parts: &Parts,
        since: Option<u64>,
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
        if entry.ttl_ms(now) <= 0 && since.is_none_or(|since| entry.stored_ms < since) {
            return None;
        }
        self.store.l1_put(&key, Arc::clone(&entry), self.l1_ttl);
        self.metrics.coalesced.inc();
        let status = status_value(format_args!(
            "fwd=uri-miss; collapsed; ttl={}; detail=l2",
            entry.ttl_ms(now) / 1000
        ));
        let conditional = Conditional::of(&parts.headers);
        let answer = Lookup::Hit(respond(&entry, now, &parts.method, &conditional), status);
        Some((entry, key, vary, answer))
    }
    /// Leads a refresh of `key` unless one runs already.
    pub(super) fn try_lead(&self, key: &str) -> Option<Lead> {
        self.store.flights.join_or_lead(key).err()
    }
}
