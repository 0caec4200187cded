//! [`ConcurrencyLimitLayer`]: an [`AdaptiveLimit`] in front of a service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower_layer::Layer;
use tower_service::Service;

use super::error::Refusal;
use super::{now, Answered, IntoPolicyError, PolicyError, PolicyFuture};
use crate::concurrency::{AdaptiveLimit, Permit, Sample, Settings};

/// An adaptive concurrency limit as a tower layer.
///
/// A call beyond the current limit of calls in flight is shed at once with
/// [`PolicyError::Overloaded`], without reaching the inner service. An admitted call holds its
/// place until its future completes (or is dropped), and on completion gives the limit its
/// latency as a sample:
///
/// | result | sample |
/// |---|---|
/// | `Ok`, or the inner service's own error | [`Sample::Success`]: the service answered |
/// | [`Timeout`](PolicyError::Timeout), [`Overloaded`](PolicyError::Overloaded), [`BulkheadFull`](PolicyError::BulkheadFull) from further in | [`Sample::Dropped`]: a sign of saturation |
/// | [`CircuitOpen`](PolicyError::CircuitOpen), [`RateLimited`](PolicyError::RateLimited) from further in | none: refused without a call, its latency says nothing |
///
/// A future dropped before completing gives no sample. Every service made by one layer (and
/// every clone of them) shares one limit; time is read from tokio's clock.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    limit: Arc<AdaptiveLimit>,
}

impl ConcurrencyLimitLayer {
    /// A layer with a new limit of `settings`.
    pub fn new(settings: Settings) -> Self {
        Self::from_limit(AdaptiveLimit::new(settings, now()))
    }

    /// A layer around an existing limit (to read its usage elsewhere).
    pub fn from_limit(limit: Arc<AdaptiveLimit>) -> Self {
        Self { limit }
    }

    /// The limit every service of this layer shares.
    pub fn limit(&self) -> &Arc<AdaptiveLimit> {
        &self.limit
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            limit: Arc::clone(&self.limit),
        }
    }
}

/// The service of [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    limit: Arc<AdaptiveLimit>,
}

impl<S> ConcurrencyLimit<S> {
    /// The limit this service admits calls under.
    pub fn limit(&self) -> &Arc<AdaptiveLimit> {
        &self.limit
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

impl<S, Request> Service<Request> for ConcurrencyLimit<S>
where
    S: Service<Request>,
    S::Error: IntoPolicyError,
{
    type Response = S::Response;
    type Error = PolicyError<<S::Error as IntoPolicyError>::Inner>;
    type Future = ConcurrencyLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(IntoPolicyError::into_policy_error)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.limit.try_acquire() {
            Ok(permit) => {
                let started = now();
                PolicyFuture::called(self.inner.call(request), Sampled { permit, started })
            }
            Err(_shed) => PolicyFuture::refused(Refusal::Overloaded),
        }
    }
}

/// The response future of [`ConcurrencyLimit`]: holds the call's place under the limit until
/// it completes.
pub type ConcurrencyLimitFuture<F> = PolicyFuture<F, Sampled>;

/// A call's place under the limit, and when the call began; the answer is the latency sample.
#[derive(Debug)]
pub struct Sampled {
    permit: Permit,
    started: Instant,
}

impl<T, E> Answered<T, E> for Sampled {
    fn answered(&mut self, result: &Result<T, PolicyError<E>>) {
        if let Some(sample) = sample_of(result) {
            self.permit.sample(sample, self.started, now());
        }
    }
}

/// The sample a result gives the limit; see [`ConcurrencyLimitLayer`].
fn sample_of<T, E>(result: &Result<T, PolicyError<E>>) -> Option<Sample> {
    match result {
        Ok(_) | Err(PolicyError::Inner(_)) => Some(Sample::Success),
        Err(PolicyError::Timeout | PolicyError::Overloaded | PolicyError::BulkheadFull) => {
            Some(Sample::Dropped)
        }
        Err(PolicyError::CircuitOpen { .. } | PolicyError::RateLimited(_)) => None,
    }
}
