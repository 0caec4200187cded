//! [`RetryLayer`]: retries within a [`RetryBudget`], waiting a [`Backoff`] between attempts.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::{now, IntoPolicyError, PolicyError};
use crate::backoff::Backoff;
use crate::budget::RetryBudget;

/// Decides whether a failed (or unwelcome) result is worth another attempt.
///
/// Implemented by [`RetryOnError`] (the default) and by every closure
/// `Fn(&Request, &Result<T, PolicyError<E>>) -> bool` (annotate the closure's arguments). It
/// sees the request, so it can refuse to retry what is not idempotent.
pub trait RetryPolicy<Request, T, E> {
    /// Whether to try `request` again after `result`.
    fn should_retry(&self, request: &Request, result: &Result<T, PolicyError<E>>) -> bool;
}

impl<Request, T, E, F> RetryPolicy<Request, T, E> for F
where
    F: Fn(&Request, &Result<T, PolicyError<E>>) -> bool,
{
    fn should_retry(&self, request: &Request, result: &Result<T, PolicyError<E>>) -> bool {
        self(request, result)
    }
}

/// The default [`RetryPolicy`]: retry every `Err` (timeouts included), never an `Ok`.
///
/// It does not look at the request: use it only for idempotent requests, or give the layer a
/// policy that does.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryOnError;

impl<Request, T, E> RetryPolicy<Request, T, E> for RetryOnError {
    fn should_retry(&self, _request: &Request, result: &Result<T, PolicyError<E>>) -> bool {
        result.is_err()
    }
}

/// Retries as a tower layer, bounded three ways: at most `max_attempts` attempts per request,
/// only while the shared [`RetryBudget`] allows (so retries add at most its ratio to the load
/// in an outage), and each retry after a [`Backoff`] wait with jitter.
///
/// Every request deposits once in the budget; every retry withdraws when it is decided, before
/// its wait. When the policy declines, the budget is spent or the attempts are used up, the
/// last result is returned as it is.
///
/// Requests must be `Clone` (each attempt sends a clone; for HTTP that means a body that can
/// be cloned, such as a buffered one), and so must the inner service: each request's future
/// drives its own clone of it, readied again before each retry.
pub struct RetryLayer<P = RetryOnError> {
    budget: Arc<RetryBudget>,
    backoff: Backoff,
    max_attempts: u32,
    policy: Arc<P>,
}

impl RetryLayer {
    /// Up to `max_attempts` attempts (at least one: the first) per request within `budget`,
    /// waiting `backoff` between them, retrying every `Err`.
    pub fn new(budget: Arc<RetryBudget>, backoff: Backoff, max_attempts: u32) -> Self {
        Self {
            budget,
            backoff,
            max_attempts: max_attempts.max(1),
            policy: Arc::new(RetryOnError),
        }
    }
}

impl<P> RetryLayer<P> {
    /// The same layer, deciding what to retry with `policy` instead.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::{Duration, Instant};
    /// use sekisho_policy::backoff::{Backoff, Jitter};
    /// use sekisho_policy::budget::RetryBudget;
    /// use sekisho_policy::layers::{PolicyError, RetryLayer};
    ///
    /// let budget = Arc::new(RetryBudget::new(0.2, 10, Duration::from_secs(10), Instant::now()));
    /// let backoff = Backoff::new(Duration::from_millis(25), Duration::from_secs(1), Jitter::Full);
    /// // Retry GETs that timed out or failed with a 5xx; nothing else.
    /// let layer = RetryLayer::new(budget, backoff, 3).policy(
    ///     |request: &http::Request<String>,
    ///      result: &Result<http::Response<String>, PolicyError<std::io::Error>>| {
    ///         request.method() == http::Method::GET
    ///             && match result {
    ///                 Ok(response) => response.status().is_server_error(),
    ///                 Err(_) => true,
    ///             }
    ///     },
    /// );
    /// # let _ = layer;
    /// ```
    pub fn policy<P2>(self, policy: P2) -> RetryLayer<P2> {
        RetryLayer {
            budget: self.budget,
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            policy: Arc::new(policy),
        }
    }

    /// The budget every service of this layer draws on.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }
}

impl<P> Clone for RetryLayer<P> {
    fn clone(&self) -> Self {
        Self {
            budget: Arc::clone(&self.budget),
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<P> fmt::Debug for RetryLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("budget", &self.budget)
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<S, P> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            budget: Arc::clone(&self.budget),
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The service of [`RetryLayer`].
pub struct Retry<S, P = RetryOnError> {
    inner: S,
    budget: Arc<RetryBudget>,
    backoff: Backoff,
    max_attempts: u32,
    policy: Arc<P>,
}

impl<S, P> Retry<S, P> {
    /// The budget this service draws on.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
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

impl<S: Clone, P> Clone for Retry<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            budget: Arc::clone(&self.budget),
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Retry<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("budget", &self.budget)
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<S, P, Request> Service<Request> for Retry<S, P>
where
    S: Service<Request> + Clone,
    S::Error: IntoPolicyError,
    Request: Clone,
    P: RetryPolicy<Request, S::Response, <S::Error as IntoPolicyError>::Inner>,
{
    type Response = S::Response;
    type Error = PolicyError<<S::Error as IntoPolicyError>::Inner>;
    type Future = RetryFuture<S, Request, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(IntoPolicyError::into_policy_error)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.budget.deposit(now());
        // The service `poll_ready` readied makes the first call and goes with the future for
        // the retries; this one keeps a fresh clone, to be readied for the next request.
        let fresh = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, fresh);
        let first = service.call(request.clone());
        RetryFuture {
            attempts: Box::new(Attempts {
                service,
                request,
                state: Attempt::Calling(Box::pin(first)),
                attempt: 1,
                previous_wait: Duration::ZERO,
                budget: Arc::clone(&self.budget),
                backoff: self.backoff,
                max_attempts: self.max_attempts,
                policy: Arc::clone(&self.policy),
            }),
        }
    }
}

/// The response future of [`Retry`]: the attempts at one request.
pub struct RetryFuture<S, Request, P>
where
    S: Service<Request>,
{
    attempts: Box<Attempts<S, Request, P>>,
}

struct Attempts<S, Request, P>
where
    S: Service<Request>,
{
    service: S,
    request: Request,
    state: Attempt<S::Future>,
    /// Attempts made so far (the one running included).
    attempt: u32,
    previous_wait: Duration,
    budget: Arc<RetryBudget>,
    backoff: Backoff,
    max_attempts: u32,
    policy: Arc<P>,
}

enum Attempt<F> {
    /// An attempt is running.
    Calling(Pin<Box<F>>),
    /// Waiting out the backoff before the next one.
    Waiting(Pin<Box<tokio::time::Sleep>>),
    /// Waiting for the service to be ready for the next one.
    Readying,
}

impl<S, Request, P> fmt::Debug for RetryFuture<S, Request, P>
where
    S: Service<Request>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.attempts.state {
            Attempt::Calling(_) => "calling",
            Attempt::Waiting(_) => "waiting",
            Attempt::Readying => "readying",
        };
        f.debug_struct("RetryFuture")
            .field("attempt", &self.attempts.attempt)
            .field("state", &state)
            .finish()
    }
}

impl<S, Request, P> Future for RetryFuture<S, Request, P>
where
    S: Service<Request>,
    S::Error: IntoPolicyError,
    Request: Clone,
    P: RetryPolicy<Request, S::Response, <S::Error as IntoPolicyError>::Inner>,
{
    type Output = Result<S::Response, PolicyError<<S::Error as IntoPolicyError>::Inner>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self.attempts;
        loop {
            match &mut this.state {
                Attempt::Calling(future) => {
                    let result = std::task::ready!(future.as_mut().poll(cx))
                        .map_err(IntoPolicyError::into_policy_error);
                    if this.attempt >= this.max_attempts
                        || !this.policy.should_retry(&this.request, &result)
                        || !this.budget.withdraw(now())
                    {
                        return Poll::Ready(result);
                    }
                    let wait =
                        this.backoff
                            .delay(this.attempt, this.previous_wait, fastrand::f64());
                    this.previous_wait = wait;
                    this.attempt += 1;
                    this.state = if wait.is_zero() {
                        Attempt::Readying
                    } else {
                        Attempt::Waiting(Box::pin(tokio::time::sleep(wait)))
                    };
                }
                Attempt::Waiting(sleep) => {
                    std::task::ready!(sleep.as_mut().poll(cx));
                    this.state = Attempt::Readying;
                }
                Attempt::Readying => {
                    if let Err(error) = std::task::ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(error.into_policy_error()));
                    }
                    let future = this.service.call(this.request.clone());
                    this.state = Attempt::Calling(Box::pin(future));
                }
            }
        }
    }
}
