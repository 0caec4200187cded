//! A bulkhead: at most `max_concurrent` calls at once, at most `max_queued` more waiting for a
//! slot, none waiting longer than `max_wait`; anything beyond is refused at once.
//!
//! It bounds what one dependency can hold of the gateway: when a service slows from 100 ms to
//! 5 s, its calls pile up to `max_concurrent` and no further, the queue stays short, and every
//! other request is refused in microseconds instead of waiting its whole deadline.
//!
//! ```
//! # tokio_test_block_on(async {
//! use std::time::Duration;
//! use sekisho_policy::bulkhead::{Bulkhead, Full};
//!
//! let bulkhead = Bulkhead::new(1, 0, Duration::ZERO);
//! let slot = bulkhead.acquire().await.unwrap();
//! assert_eq!(bulkhead.acquire().await.unwrap_err(), Full::Busy);
//! drop(slot);
//! assert!(bulkhead.acquire().await.is_ok());
//! # });
//! # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
//! #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
//! # }
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounded concurrency with a bounded, time-limited queue.
#[derive(Debug)]
pub struct Bulkhead {
    slots: Arc<Semaphore>,
    max_concurrent: u32,
    max_queued: u32,
    max_wait: Duration,
    queued: AtomicU32,
    rejected: AtomicU64,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every slot taken and the queue full (or no queue).
    Busy,
    /// Queued, but no slot came free within `max_wait`.
    WaitedTooLong,
}

/// A slot, held until dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// What the bulkhead holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Slots in use.
    pub in_use: u32,
    /// Calls waiting for a slot.
    pub queued: u32,
    /// The limit.
    pub max_concurrent: u32,
    /// Calls refused so far.
    pub rejected: u64,
}

impl Bulkhead {
    /// At most `max_concurrent` (≥ 1) at once, `max_queued` waiting up to `max_wait`.
    pub fn new(max_concurrent: u32, max_queued: u32, max_wait: Duration) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent as usize)),
            max_concurrent,
            max_queued,
            max_wait,
            queued: AtomicU32::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// A slot now, or after waiting in the queue, or the reason there is none.
    pub async fn acquire(&self) -> Result<Slot, Full> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        if self.max_queued == 0 || self.max_wait.is_zero() {
            return Err(self.refuse(Full::Busy));
        }
        // Join the queue if it has room: the count goes up first, so two callers cannot both
        // take the last place.
        let joined = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.max_queued).then_some(queued + 1)
            });
        if joined.is_err() {
            return Err(self.refuse(Full::Busy));
        }
        // Leave the queue however the wait ends — also when the caller stops waiting (its
        // future dropped: a client gone), or its place would be lost for good.
        let _in_queue = Queued(&self.queued);
        let waited =
            tokio::time::timeout(self.max_wait, Arc::clone(&self.slots).acquire_owned()).await;
        match waited {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            // The semaphore is never closed; treat it like a timeout if it were.
            Ok(Err(_)) | Err(_) => Err(self.refuse(Full::WaitedTooLong)),
        }
    }

    fn refuse(&self, why: Full) -> Full {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        why
    }

    /// What it holds now.
    pub fn usage(&self) -> Usage {
        let free = u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX);
        Usage {
            in_use: self.max_concurrent.saturating_sub(free),
            queued: self.queued.load(Ordering::Acquire),
            max_concurrent: self.max_concurrent,
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// A place in the queue, given back when dropped.
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_stops_waiting_gives_its_place_in_the_queue_back() {
        let bulkhead = Arc::new(Bulkhead::new(1, 1, Duration::from_secs(5)));
        let _held = bulkhead.acquire().await.unwrap();
        let waiting = {
            let bulkhead = Arc::clone(&bulkhead);
            tokio::spawn(async move { bulkhead.acquire().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(bulkhead.usage().queued, 1);
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(bulkhead.usage().queued, 0);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn beyond_its_slots_and_queue_it_refuses_at_once() {
        runtime().block_on(async {
            let bulkhead = Arc::new(Bulkhead::new(2, 1, Duration::from_millis(50)));
            let a = bulkhead.acquire().await.unwrap();
            let _b = bulkhead.acquire().await.unwrap();
            // The third waits in the queue…
            let waiting = tokio::spawn({
                let bulkhead = Arc::clone(&bulkhead);
                async move { bulkhead.acquire().await }
            });
            tokio::task::yield_now().await;
            assert_eq!(bulkhead.usage().queued, 1);
            // …so the fourth finds the queue full and is refused without waiting.
            assert_eq!(bulkhead.acquire().await.unwrap_err(), Full::Busy);
            // A slot comes free: the queued call gets it.
            drop(a);
            let _c = waiting.await.unwrap().unwrap();
            let usage = bulkhead.usage();
            assert_eq!((usage.in_use, usage.queued, usage.rejected), (2, 0, 1));
        });
    }

    #[test]
    fn a_queued_call_gives_up_after_max_wait() {
        runtime().block_on(async {
            let bulkhead = Bulkhead::new(1, 5, Duration::from_millis(50));
            let _held = bulkhead.acquire().await.unwrap();
            let started = tokio::time::Instant::now();
            assert_eq!(bulkhead.acquire().await.unwrap_err(), Full::WaitedTooLong);
            assert_eq!(started.elapsed(), Duration::from_millis(50));
            assert_eq!(bulkhead.usage().queued, 0);
        });
    }
}
