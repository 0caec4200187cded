//! sekisho-policy: the decisions of a resilient gateway, without the I/O.
//!
//! # What it is for
//!
//! The policies sekisho applies to every call — which target takes a request; whether a call is
//! admitted, shed, rate-limited or retried, and after how long — as plain types with methods,
//! kept apart from the gateway so that each can be tested on a clock the test moves and reused
//! in any hyper or tower application. `sekisho-gateway` builds its request path from them, and
//! `sekisho-store` runs the same rate-limiting rules on Redis.
//!
//! # What it refuses
//!
//! - **No I/O.** It opens no sockets, reads no files and logs nothing: the caller owns the
//!   connections and reports the figures these types hand out (`figures()`, `usage()`, …).
//! - **No serde.** Settings are plain structs and enums ([`breaker::BreakerConfig`],
//!   [`concurrency::Settings`], [`ratelimit::Limit`], …); reading a configuration file into them
//!   is the caller's job.
//! - **No clock of its own.** Time is passed in: an [`Instant`](std::time::Instant) `now` to
//!   the balancer and its targets' loads, the breaker, the retry budget and the adaptive limit;
//!   nanoseconds of a monotonic clock the caller owns to the rate limiters. Two exceptions:
//!   [`Breaker::new`](breaker::Breaker::new) reads the clock once for its window's epoch
//!   ([`Breaker::new_at`](breaker::Breaker::new_at) takes it instead), and
//!   [`Bulkhead::acquire`](bulkhead::Bulkhead::acquire), the one call that waits, waits on
//!   tokio's semaphore and timer, which a paused tokio clock drives.
//!
//! # Modules
//!
//! | module | decides |
//! |---|---|
//! | [`balance`] | which target takes a request: round robin, smooth weighted round robin, least connections, peak-EWMA least response time, IP hash, consistent hash, weighted random by health score |
//! | [`breaker`] | whether a call may go to a dependency that has been failing (resilience4j's circuit breaker) |
//! | [`bulkhead`] | whether a call gets one of a bounded number of slots, or a bounded wait for one |
//! | [`budget`] | whether a retry fits in the retry budget (retries ≤ a ratio of requests, Finagle-style) |
//! | [`backoff`] | how long to wait before a retry (exponential, with jitter) |
//! | [`concurrency`] | how many calls may be in flight, found from latency (Gradient2 or AIMD) |
//! | [`ratelimit`] | whether a request fits its key's quota: token bucket, GCRA, fixed window, sliding log, sliding counter; in process with [`ratelimit::LocalLimiter`] |
//! | `layers` | all of the above as tower layers (feature `tower`) |
//!
//! # The `tower` feature
//!
//! On by default. It adds the `layers` module: `RateLimitLayer`, `ConcurrencyLimitLayer`,
//! `CircuitBreakerLayer`, `BulkheadLayer`, `RetryLayer` and `TimeoutLayer`, with one flat error
//! type (`PolicyError`), for any hyper, axum or tower application; the layers read tokio's
//! clock. It costs two small dependencies, `tower-layer` and `tower-service`.
//!
//! The sekisho workspace turns it off (`default-features = false`): the gateway wires the
//! primitives into its request path by hand and builds neither the layers nor `tower-layer`.
//! Without the feature the crate depends only on `tokio` (the bulkhead's semaphore and timer),
//! `fastrand` and `xxhash-rust`.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod concurrency;
#[cfg(feature = "tower")]
pub mod layers;
pub mod ratelimit;
