//! sekisho-policy: the decisions of a resilient gateway, without the I/O.
//!
//! What it is for: the logic that decides which target takes a request (and, as sekisho grows,
//! whether a call is admitted, retried or rejected), kept free of sockets, serde and stores so it
//! can be tested on a paused clock and reused in any hyper or tower application.
//!
//! What it refuses to do: open connections, read configuration files, log, or allocate on the
//! hot path of a decision.
//!
//! With the `tower` feature (on by default), [`layers`] wraps the policies as tower layers for
//! any hyper, axum or tower application.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod concurrency;
#[cfg(feature = "tower")]
pub mod layers;
pub mod ratelimit;
