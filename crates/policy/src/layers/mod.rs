//! The policies as [tower](https://docs.rs/tower) layers, for any hyper, axum or tower
//! application (feature `tower`, on by default).
//!
//! | layer | policy | refuses with |
//! |---|---|---|
//! | [`RateLimitLayer`] | [`LocalLimiter`](crate::ratelimit::LocalLimiter), one unit per request and key | [`PolicyError::RateLimited`] |
//! | [`ConcurrencyLimitLayer`] | [`AdaptiveLimit`](crate::concurrency::AdaptiveLimit) | [`PolicyError::Overloaded`] |
//! | [`CircuitBreakerLayer`] | [`Breaker`](crate::breaker::Breaker) | [`PolicyError::CircuitOpen`] |
//! | [`BulkheadLayer`] | [`Bulkhead`](crate::bulkhead::Bulkhead) | [`PolicyError::BulkheadFull`] |
//! | [`RetryLayer`] | [`RetryBudget`](crate::budget::RetryBudget) and [`Backoff`](crate::backoff::Backoff) | (returns the last attempt's result) |
//! | [`TimeoutLayer`] | [`tokio::time::timeout`] | [`PolicyError::Timeout`] |
//!
//! Every layer's service returns [`PolicyError<E>`], `E` being the innermost service's error:
//! a layer passes on a `PolicyError` from further in as it is, so a whole stack has one flat
//! error type (see [`IntoPolicyError`]; [`WrapErrorLayer`] adapts an inner service whose error
//! type does not implement it).
//!
//! A refusal is decided in `call` and returned by the response future without calling the
//! inner service; `poll_ready` never fails because of a policy, so a refusal does not mark the
//! service as broken for a balancer or a buffer in front of it. The policy state (breaker,
//! limiter, bulkhead, limit, budget) is shared by every service a layer makes and by all their
//! clones, so the per-request clones hyper and axum make all count against the same limits.
//! Time is read from tokio's clock, so tests can run them on a paused clock. Each layer boxes
//! the inner service's future (one small allocation per layer and call): the module depends on
//! nothing but `tower-layer` and `tower-service`, so it pins futures without a projection
//! macro and without `unsafe`.
//!
//! Recommended order, outermost first: rate limit → concurrency limit → circuit breaker →
//! bulkhead → retry → timeout → service (the README says why).
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use sekisho_policy::breaker::BreakerConfig;
//! use sekisho_policy::layers::{CircuitBreakerLayer, PolicyError, TimeoutLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let service = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(BreakerConfig::default()))
//!     .layer(TimeoutLayer::new(Duration::from_millis(50)))
//!     .service(service_fn(|name: &'static str| async move {
//!         if name == "slow" {
//!             tokio::time::sleep(Duration::from_secs(1)).await;
//!         }
//!         Ok::<_, Infallible>(format!("hello, {name}"))
//!     }));
//! assert_eq!(service.clone().oneshot("world").await, Ok("hello, world".to_owned()));
//! assert_eq!(service.oneshot("slow").await, Err(PolicyError::Timeout));
//! # });
//! ```

mod admitted;
mod breaker;
mod bulkhead;
mod concurrency;
mod error;
mod ratelimit;
mod retry;
mod timeout;

use std::time::Instant;

pub use admitted::{Answered, PolicyFuture};
pub use breaker::{
    CircuitBreaker, CircuitBreakerFuture, CircuitBreakerLayer, Classify, ErrorIsFailure,
};
pub use bulkhead::{Bulkhead, BulkheadFuture, BulkheadLayer};
pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitFuture, ConcurrencyLimitLayer};
pub use error::{IntoPolicyError, PolicyError, WrapError, WrapErrorFuture, WrapErrorLayer};
pub use ratelimit::{RateLimit, RateLimitFuture, RateLimitLayer};
pub use retry::{Retry, RetryFuture, RetryLayer, RetryOnError, RetryPolicy};
pub use timeout::{Timeout, TimeoutFuture, TimeoutLayer};

/// Now, on tokio's clock (the test clock when it is paused, the system's monotonic clock
/// otherwise), as the policies take it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Now as nanoseconds since `epoch`: the monotonic clock the rate limiter takes.
fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(now().saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}
