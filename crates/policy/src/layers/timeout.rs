//! [`TimeoutLayer`]: a deadline on every call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::{IntoPolicyError, PolicyError};

/// A deadline as a tower layer: a call still running `timeout` after it was made is dropped
/// and fails with [`PolicyError::Timeout`] ([`tokio::time::timeout`]).
///
/// The deadline runs from `call`, not from `poll_ready`: waiting for the inner service to be
/// ready is not counted. Needs a tokio runtime with its timer enabled.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Calls fail after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// The deadline of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Timeout<S> {
    /// The deadline of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
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

impl<S, Request> Service<Request> for Timeout<S>
where
    S: Service<Request>,
    S::Error: IntoPolicyError,
{
    type Response = S::Response;
    type Error = PolicyError<<S::Error as IntoPolicyError>::Inner>;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(IntoPolicyError::into_policy_error)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        TimeoutFuture {
            inner: Box::pin(tokio::time::timeout(self.timeout, self.inner.call(request))),
        }
    }
}

/// The response future of [`Timeout`].
pub struct TimeoutFuture<F> {
    inner: Pin<Box<tokio::time::Timeout<F>>>,
}

impl<F> fmt::Debug for TimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: IntoPolicyError,
{
    type Output = Result<T, PolicyError<E::Inner>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match std::task::ready!(self.inner.as_mut().poll(cx)) {
            Ok(result) => Poll::Ready(result.map_err(IntoPolicyError::into_policy_error)),
            Err(_elapsed) => Poll::Ready(Err(PolicyError::Timeout)),
        }
    }
}
