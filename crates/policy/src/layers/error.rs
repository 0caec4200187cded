//! The one error every layer returns, and how an inner service's error becomes it.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use crate::ratelimit::Decision;

/// Why a layer did not return the inner service's response.
///
/// Every layer of this module returns `PolicyError<E>`, `E` being the error of the innermost
/// service: stacked layers share one flat error type instead of nesting
/// `PolicyError<PolicyError<…>>` (see [`IntoPolicyError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError<E> {
    /// The inner service failed.
    Inner(E),
    /// The circuit breaker refused the call without making it.
    CircuitOpen {
        /// Until the circuit lets a probe through (zero: try again soon).
        retry_after: Duration,
    },
    /// The bulkhead had no free slot and no room (or no time) in its queue.
    BulkheadFull,
    /// The rate limiter refused the request; the decision holds the quota, what is left and
    /// when to come back.
    RateLimited(Decision),
    /// The adaptive concurrency limit was reached: the request was shed.
    Overloaded,
    /// The call took longer than the timeout and was abandoned.
    Timeout,
}

impl<E> PolicyError<E> {
    /// The inner service's error, if that is what this is.
    pub fn into_inner(self) -> Option<E> {
        match self {
            PolicyError::Inner(error) => Some(error),
            _ => None,
        }
    }

    /// Whether a policy refused the request before the inner service was called (everything
    /// but [`Inner`](PolicyError::Inner) and [`Timeout`](PolicyError::Timeout)).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            PolicyError::CircuitOpen { .. }
                | PolicyError::BulkheadFull
                | PolicyError::RateLimited(_)
                | PolicyError::Overloaded
        )
    }

    /// When the caller may try again, for a `Retry-After` header: known for an open circuit
    /// and a rate-limited request, `None` otherwise.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PolicyError::CircuitOpen { retry_after } => Some(*retry_after),
            PolicyError::RateLimited(decision) => Some(decision.retry_after),
            _ => None,
        }
    }

    /// Changes the inner error with `f`, leaving refusals as they are.
    pub fn map_inner<F, E2>(self, f: F) -> PolicyError<E2>
    where
        F: FnOnce(E) -> E2,
    {
        match self {
            PolicyError::Inner(error) => PolicyError::Inner(f(error)),
            PolicyError::CircuitOpen { retry_after } => PolicyError::CircuitOpen { retry_after },
            PolicyError::BulkheadFull => PolicyError::BulkheadFull,
            PolicyError::RateLimited(decision) => PolicyError::RateLimited(decision),
            PolicyError::Overloaded => PolicyError::Overloaded,
            PolicyError::Timeout => PolicyError::Timeout,
        }
    }
}

impl<E: fmt::Display> fmt::Display for PolicyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Transparent: the inner error speaks for itself.
            PolicyError::Inner(error) => error.fmt(f),
            PolicyError::CircuitOpen { retry_after } => {
                write!(f, "circuit open, retry after {retry_after:?}")
            }
            PolicyError::BulkheadFull => f.write_str("bulkhead full"),
            PolicyError::RateLimited(decision) => write!(
                f,
                "rate limited (quota {}), retry after {:?}",
                decision.limit, decision.retry_after
            ),
            PolicyError::Overloaded => f.write_str("overloaded: concurrency limit reached"),
            PolicyError::Timeout => f.write_str("timed out"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for PolicyError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent, like its `Display`: the inner error's cause is this one's.
            PolicyError::Inner(error) => error.source(),
            _ => None,
        }
    }
}

impl<E> From<E> for PolicyError<E> {
    fn from(error: E) -> Self {
        PolicyError::Inner(error)
    }
}

/// An error a layer can return as a [`PolicyError`]: how stacked layers keep one flat error
/// type.
///
/// A layer wrapping a service whose error is `S::Error` returns
/// `PolicyError<<S::Error as IntoPolicyError>::Inner>`. A [`PolicyError`] from a layer further
/// in passes through as it is; the innermost service's own error becomes
/// [`PolicyError::Inner`]. Implemented for [`Infallible`] (what hyper and axum services
/// return), [`std::io::Error`] and `Box<dyn Error + Send + Sync>` (tower's `BoxError`); for
/// another error type, implement it in three lines, or put a [`WrapErrorLayer`] innermost:
///
/// ```
/// use sekisho_policy::layers::{IntoPolicyError, PolicyError};
///
/// #[derive(Debug)]
/// struct UpstreamError;
///
/// impl IntoPolicyError for UpstreamError {
///     type Inner = UpstreamError;
///     fn into_policy_error(self) -> PolicyError<UpstreamError> {
///         PolicyError::Inner(self)
///     }
/// }
/// ```
pub trait IntoPolicyError {
    /// The innermost service's error type.
    type Inner;

    /// This error as a [`PolicyError`].
    fn into_policy_error(self) -> PolicyError<Self::Inner>;
}

impl<E> IntoPolicyError for PolicyError<E> {
    type Inner = E;

    fn into_policy_error(self) -> PolicyError<E> {
        self
    }
}

impl IntoPolicyError for Infallible {
    type Inner = Infallible;

    fn into_policy_error(self) -> PolicyError<Infallible> {
        match self {}
    }
}

impl IntoPolicyError for std::io::Error {
    type Inner = std::io::Error;

    fn into_policy_error(self) -> PolicyError<std::io::Error> {
        PolicyError::Inner(self)
    }
}

impl IntoPolicyError for Box<dyn std::error::Error + Send + Sync> {
    type Inner = Box<dyn std::error::Error + Send + Sync>;

    fn into_policy_error(self) -> PolicyError<Self::Inner> {
        PolicyError::Inner(self)
    }
}

/// A refusal decided before the inner service was called, turned into a [`PolicyError`] of
/// whatever inner error type when its future is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    CircuitOpen(Duration),
    BulkheadFull,
    RateLimited(Decision),
    Overloaded,
}

impl Refusal {
    pub(crate) fn into_error<E>(self) -> PolicyError<E> {
        match self {
            Refusal::CircuitOpen(retry_after) => PolicyError::CircuitOpen { retry_after },
            Refusal::BulkheadFull => PolicyError::BulkheadFull,
            Refusal::RateLimited(decision) => PolicyError::RateLimited(decision),
            Refusal::Overloaded => PolicyError::Overloaded,
        }
    }
}

/// Makes any service's error a [`PolicyError::Inner`], for an innermost service whose error
/// type does not implement [`IntoPolicyError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WrapErrorLayer;

impl WrapErrorLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for WrapErrorLayer {
    type Service = WrapError<S>;

    fn layer(&self, inner: S) -> WrapError<S> {
        WrapError { inner }
    }
}

/// The service of [`WrapErrorLayer`]: the inner service, its error as
/// [`PolicyError::Inner`].
#[derive(Debug, Clone)]
pub struct WrapError<S> {
    inner: S,
}

impl<S> WrapError<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, to change.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request> Service<Request> for WrapError<S>
where
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = PolicyError<S::Error>;
    type Future = WrapErrorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(PolicyError::Inner)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        WrapErrorFuture {
            inner: Box::pin(self.inner.call(request)),
        }
    }
}

/// The response future of [`WrapError`].
pub struct WrapErrorFuture<F> {
    inner: Pin<Box<F>>,
}

impl<F> fmt::Debug for WrapErrorFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrapErrorFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for WrapErrorFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, PolicyError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map_err(PolicyError::Inner)
    }
}
