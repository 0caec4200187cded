//! Flights: one upstream call in progress per key. The first request of a key leads its flight
//! ([`Lead`]), the others wait for how it ends ([`FlightEnd`]); with the shared tier the leader
//! may also hold the fill lock, given back when the flight ends. How misses use flights is in
//! `collapse.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ::http::header::HeaderName;
use sekisho_store::cache::RedisCache;
use tokio::sync::watch;
use tokio::time::Instant;

use super::entry::Entry;
use crate::sync::lock;

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

/// The flights in progress, by key.
#[derive(Debug, Default)]
pub(super) struct Flights {
    by_key: Mutex<HashMap<String, Arc<Flight>>>,
}

impl Flights {
    /// Joins the flight of `key` (`Ok`) or starts it and leads it (`Err`).
    pub(super) fn join_or_lead(self: &Arc<Self>, key: &str) -> Result<Arc<Flight>, Lead> {
        let mut flights = lock(&self.by_key);
        if let Some(flight) = flights.get(key) {
            return Ok(Arc::clone(flight));
        }
        let flight = Arc::new(Flight {
            done: watch::channel(None).0,
        });
        flights.insert(key.to_owned(), Arc::clone(&flight));
        Err(Lead {
            flights: Arc::clone(self),
            key: key.to_owned(),
            flight,
            lock: None,
            ended: false,
        })
    }

    /// Flights in progress.
    pub(super) fn len(&self) -> usize {
        lock(&self.by_key).len()
    }
}

impl Flight {
    /// How the flight ended, once it has, or `None` when `deadline` came first.
    pub(super) async fn ended(&self, deadline: Instant) -> Option<FlightEnd> {
        let mut done = self.done.subscribe();
        tokio::time::timeout_at(deadline, done.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|end| end.ok().and_then(|end| end.clone()))
    }
}

/// Leadership of a flight; ends it as not stored if dropped before [`Lead::end`].
#[derive(Debug)]
pub(super) struct Lead {
    flights: Arc<Flights>,
    key: String,
    flight: Arc<Flight>,
    lock: Option<(Arc<RedisCache>, String)>,
    ended: bool,
}

impl Lead {
    /// The key the flight is for.
    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// Holds the shared tier's fill lock (`token`) until the flight ends.
    pub(super) fn hold_fill_lock(&mut self, l2: Arc<RedisCache>, token: String) {
        self.lock = Some((l2, token));
    }

    /// Ends the flight: its waiters learn `end`.
    pub(super) fn end(mut self, end: FlightEnd) {
        self.finish(end);
    }

    fn finish(&mut self, end: FlightEnd) {
        if self.ended {
            return;
        }
        self.ended = true;
        {
            let mut flights = lock(&self.flights.by_key);
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
