//! [`RateLimitLayer`]: a [`LocalLimiter`] in front of a service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower_layer::Layer;
use tower_service::Service;

use super::error::Refusal;
use super::{nanos_since, now, IntoPolicyError, PolicyError, PolicyFuture};
use crate::ratelimit::{Limit, LocalLimiter};

/// A per-key rate limit as a tower layer.
///
/// Each request is given a key by the extractor closure (`Fn(&Request) -> String`: a client
/// address, an API key, a tenant…) and costs one unit of that key's quota in a
/// [`LocalLimiter`]. A refused request fails with [`PolicyError::RateLimited`], carrying the
/// [`Decision`](crate::ratelimit::Decision) (quota, remaining, reset, retry-after) for the
/// `RateLimit-*` and `Retry-After` headers, without reaching the inner service.
///
/// Every service made by one layer (and every clone of it) shares one limiter and one clock:
/// tokio's, counted from the layer's creation. To share a limiter between several stacks,
/// clone the layer rather than build two around it: two layers count time from two origins,
/// and the limiter would see time step back between them (it then decides as if no time had
/// passed, which is safe but stricter).
pub struct RateLimitLayer<K> {
    limiter: Arc<LocalLimiter>,
    key: Arc<K>,
    epoch: Instant,
}

impl<K> RateLimitLayer<K> {
    /// A layer with a new limiter of `limit` that remembers about `max_keys` keys at most (see
    /// [`LocalLimiter::new`]); `key` gives each request its key (annotate its argument's type).
    ///
    /// ```
    /// use std::time::Duration;
    /// use sekisho_policy::layers::RateLimitLayer;
    /// use sekisho_policy::ratelimit::Limit;
    ///
    /// // 100 requests per second per client, bursts of 20.
    /// let layer = RateLimitLayer::new(
    ///     Limit::Gcra { burst: 20, per_second: 100.0 },
    ///     100_000,
    ///     |request: &http::Request<String>| {
    ///         request
    ///             .headers()
    ///             .get("x-client-id")
    ///             .and_then(|value| value.to_str().ok())
    ///             .unwrap_or("anonymous")
    ///             .to_owned()
    ///     },
    /// );
    /// # let _ = layer;
    /// ```
    pub fn new(limit: Limit, max_keys: usize, key: K) -> Self {
        Self::from_limiter(Arc::new(LocalLimiter::new(limit, max_keys)), key)
    }

    /// A layer around an existing limiter (to read it, or sweep it, elsewhere).
    pub fn from_limiter(limiter: Arc<LocalLimiter>, key: K) -> Self {
        Self {
            limiter,
            key: Arc::new(key),
            epoch: now(),
        }
    }

    /// The limiter every service of this layer shares.
    pub fn limiter(&self) -> &Arc<LocalLimiter> {
        &self.limiter
    }
}

impl<K> Clone for RateLimitLayer<K> {
    fn clone(&self) -> Self {
        Self {
            limiter: Arc::clone(&self.limiter),
            key: Arc::clone(&self.key),
            epoch: self.epoch,
        }
    }
}

impl<K> fmt::Debug for RateLimitLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limit", &self.limiter.limit())
            .finish_non_exhaustive()
    }
}

impl<S, K> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
            key: Arc::clone(&self.key),
            epoch: self.epoch,
        }
    }
}

/// The service of [`RateLimitLayer`].
pub struct RateLimit<S, K> {
    inner: S,
    limiter: Arc<LocalLimiter>,
    key: Arc<K>,
    epoch: Instant,
}

impl<S, K> RateLimit<S, K> {
    /// The limiter this service consults.
    pub fn limiter(&self) -> &Arc<LocalLimiter> {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K> Clone for RateLimit<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
            key: Arc::clone(&self.key),
            epoch: self.epoch,
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for RateLimit<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limit", &self.limiter.limit())
            .finish_non_exhaustive()
    }
}

impl<S, K, Request> Service<Request> for RateLimit<S, K>
where
    S: Service<Request>,
    S::Error: IntoPolicyError,
    K: Fn(&Request) -> String,
{
    type Response = S::Response;
    type Error = PolicyError<<S::Error as IntoPolicyError>::Inner>;
    type Future = RateLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(IntoPolicyError::into_policy_error)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let key = (self.key)(&request);
        let decision = self.limiter.decide(&key, nanos_since(self.epoch), 1);
        if decision.allowed {
            PolicyFuture::called(self.inner.call(request), ())
        } else {
            PolicyFuture::refused(Refusal::RateLimited(decision))
        }
    }
}

/// The response future of [`RateLimit`].
pub type RateLimitFuture<F> = PolicyFuture<F, ()>;
