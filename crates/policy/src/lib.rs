//! sekisho-policy: the decisions of a resilient gateway, without the I/O.
//!
//! What it is for: the logic that decides which target takes a request (and, as sekisho grows,
//! whether a call is admitted, retried or rejected), kept free of sockets, serde and stores so it
//! can be tested on a paused clock and reused in any hyper or tower application.
//!
//! What it refuses to do: open connections, read configuration files, log, or allocate on the
//! hot path of a decision.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod concurrency;
pub mod ratelimit;
