//! [`CircuitBreakerLayer`]: a [`Breaker`] in front of a service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower_layer::Layer;
use tower_service::Service;

use super::error::Refusal;
use super::{now, Answered, IntoPolicyError, PolicyError, PolicyFuture};
use crate::breaker::{Breaker, BreakerConfig, Outcome, Permit};

/// Decides whether a call's result counts as a failure for the circuit breaker.
///
/// Implemented by [`ErrorIsFailure`] (the default) and by every closure
/// `Fn(&Result<T, PolicyError<E>>) -> bool`, `T` being the response and `E` the innermost
/// service's error (annotate the closure's argument: its type cannot be inferred). The result
/// is the one the breaker's service returns, so a closure can tell a timeout from the inner
/// service's own error, or count a response with a 5xx status as a failure.
pub trait Classify<T, E> {
    /// Whether `result` is a failure.
    fn is_failure(&self, result: &Result<T, PolicyError<E>>) -> bool;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, PolicyError<E>>) -> bool,
{
    fn is_failure(&self, result: &Result<T, PolicyError<E>>) -> bool {
        self(result)
    }
}

/// The default [`Classify`]: every `Err` is a failure, every `Ok` a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorIsFailure;

impl<T, E> Classify<T, E> for ErrorIsFailure {
    fn is_failure(&self, result: &Result<T, PolicyError<E>>) -> bool {
        result.is_err()
    }
}

/// A circuit breaker as a tower layer.
///
/// Each call first asks the breaker for a permit; when the circuit is open the call is refused
/// with [`PolicyError::CircuitOpen`] (and the time until a probe may pass) without reaching the
/// inner service. Otherwise the inner service is called and, when its future completes, the
/// outcome is recorded: failed if the classifier says so (by default, any `Err`), slow if it
/// took longer than the breaker's `slow_call_threshold`. A call whose future is dropped before
/// completing is not judged (a half-open probe slot is given back).
///
/// Every service made by one layer (and every clone of them) shares one breaker. Time is read
/// from tokio's clock, so a paused test clock drives `open_for`.
pub struct CircuitBreakerLayer<C = ErrorIsFailure> {
    breaker: Arc<Breaker>,
    classify: Arc<C>,
}

impl CircuitBreakerLayer {
    /// A layer with a new breaker of `config`, counting every `Err` as a failure.
    pub fn new(config: BreakerConfig) -> Self {
        Self::from_breaker(Arc::new(Breaker::new_at(config, now())))
    }

    /// A layer around an existing breaker (to read its figures, or force it open, elsewhere).
    pub fn from_breaker(breaker: Arc<Breaker>) -> Self {
        Self {
            breaker,
            classify: Arc::new(ErrorIsFailure),
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// The same layer, judging results with `classify` instead.
    ///
    /// ```
    /// use sekisho_policy::breaker::BreakerConfig;
    /// use sekisho_policy::layers::{CircuitBreakerLayer, PolicyError};
    ///
    /// // Responses are status codes here: a 5xx or a timeout is a failure, a 4xx is not.
    /// let layer = CircuitBreakerLayer::new(BreakerConfig::default()).classify(
    ///     |result: &Result<u16, PolicyError<std::io::Error>>| match result {
    ///         Ok(status) => *status >= 500,
    ///         Err(_) => true,
    ///     },
    /// );
    /// # let _ = layer;
    /// ```
    pub fn classify<C2>(self, classify: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify: Arc::new(classify),
        }
    }

    /// The breaker every service of this layer shares.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

impl<C> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            breaker: Arc::clone(&self.breaker),
            classify: Arc::clone(&self.classify),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            breaker: Arc::clone(&self.breaker),
            classify: Arc::clone(&self.classify),
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
pub struct CircuitBreaker<S, C = ErrorIsFailure> {
    inner: S,
    breaker: Arc<Breaker>,
    classify: Arc<C>,
}

impl<S, C> CircuitBreaker<S, C> {
    /// The breaker this service consults.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
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

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: Arc::clone(&self.breaker),
            classify: Arc::clone(&self.classify),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, Request> Service<Request> for CircuitBreaker<S, C>
where
    S: Service<Request>,
    S::Error: IntoPolicyError,
    C: Classify<S::Response, <S::Error as IntoPolicyError>::Inner>,
{
    type Response = S::Response;
    type Error = PolicyError<<S::Error as IntoPolicyError>::Inner>;
    type Future = CircuitBreakerFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(IntoPolicyError::into_policy_error)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = now();
        match self.breaker.try_acquire(started) {
            Ok(permit) => PolicyFuture::called(
                self.inner.call(request),
                Judged {
                    permit: Some(permit),
                    started,
                    breaker: Arc::clone(&self.breaker),
                    classify: Arc::clone(&self.classify),
                },
            ),
            Err(rejected) => PolicyFuture::refused(Refusal::CircuitOpen(rejected.retry_after)),
        }
    }
}

/// The response future of [`CircuitBreaker`].
pub type CircuitBreakerFuture<F, C> = PolicyFuture<F, Judged<C>>;

/// A call's permit from the breaker, to be judged by `C` when the call answers.
pub struct Judged<C> {
    /// Taken when the outcome is recorded; still here on drop means the call was abandoned.
    permit: Option<Permit>,
    started: Instant,
    breaker: Arc<Breaker>,
    classify: Arc<C>,
}

impl<C> fmt::Debug for Judged<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Judged")
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

impl<T, E, C: Classify<T, E>> Answered<T, E> for Judged<C> {
    fn answered(&mut self, result: &Result<T, PolicyError<E>>) {
        if let Some(permit) = self.permit.take() {
            let ended = now();
            let outcome = Outcome {
                failed: self.classify.is_failure(result),
                duration: ended.saturating_duration_since(self.started),
            };
            self.breaker.record(permit, outcome, ended);
        }
    }
}

impl<C> Drop for Judged<C> {
    fn drop(&mut self) {
        // Abandoned before it answered: not judged, and a half-open probe slot comes back.
        if let Some(permit) = self.permit.take() {
            self.breaker.cancel(permit);
        }
    }
}
