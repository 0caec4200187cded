//! [`BulkheadLayer`]: a [`bulkhead::Bulkhead`](crate::bulkhead::Bulkhead) in front of a
//! service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::error::Refusal;
use super::{Answered, IntoPolicyError, PolicyError, PolicyFuture};
use crate::bulkhead::{self, Full, Slot};

/// A bulkhead as a tower layer: at most `max_concurrent` calls in the inner service at once,
/// at most `max_queued` more waiting (each no longer than `max_wait`) for a slot; anything
/// beyond is refused with [`PolicyError::BulkheadFull`] without reaching the inner service.
///
/// The slot is taken in `poll_ready` (the wait in the queue is the service not being ready
/// yet), held by the response future, and given back when the inner service's future
/// completes or is dropped. For an HTTP service that is when the response head is ready, not
/// when its body has been streamed. A refusal is not an error of `poll_ready`, which answers
/// ready: the call that follows returns the error, so a refusal never marks the service as
/// failed for a load balancer or buffer in front of it.
///
/// Every service made by one layer (and every clone of them) shares one bulkhead.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Arc<bulkhead::Bulkhead>,
}

impl BulkheadLayer {
    /// A layer with a new bulkhead: see [`bulkhead::Bulkhead::new`].
    pub fn new(max_concurrent: u32, max_queued: u32, max_wait: Duration) -> Self {
        Self::from_bulkhead(Arc::new(bulkhead::Bulkhead::new(
            max_concurrent,
            max_queued,
            max_wait,
        )))
    }

    /// A layer around an existing bulkhead (to read its usage elsewhere).
    pub fn from_bulkhead(bulkhead: Arc<bulkhead::Bulkhead>) -> Self {
        Self { bulkhead }
    }

    /// The bulkhead every service of this layer shares.
    pub fn bulkhead(&self) -> &Arc<bulkhead::Bulkhead> {
        &self.bulkhead
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            bulkhead: Arc::clone(&self.bulkhead),
            admission: Admission::Idle,
        }
    }
}

/// The service of [`BulkheadLayer`].
pub struct Bulkhead<S> {
    inner: S,
    bulkhead: Arc<bulkhead::Bulkhead>,
    admission: Admission,
}

/// Where this service (this clone) stands between `poll_ready` and `call`.
enum Admission {
    /// Not asked yet.
    Idle,
    /// Waiting in the bulkhead's queue.
    Waiting(Waiting),
    /// A slot is held for the next call.
    Admitted(Slot),
    /// The bulkhead refused: the next call fails.
    Refused,
}

type Acquire = Pin<Box<dyn Future<Output = Result<Slot, Full>> + Send + Sync>>;

/// A wait in the bulkhead's queue; dropping it leaves the queue (the wait is cancel-safe).
struct Waiting(Option<Acquire>);

impl<S> Bulkhead<S> {
    /// The bulkhead this service takes its slots from.
    pub fn bulkhead(&self) -> &Arc<bulkhead::Bulkhead> {
        &self.bulkhead
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Bulkhead<S> {
    /// A clone with no slot of its own: it waits for one in its own `poll_ready`.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            bulkhead: Arc::clone(&self.bulkhead),
            admission: Admission::Idle,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let admission = match self.admission {
            Admission::Idle => "idle",
            Admission::Waiting(_) => "waiting",
            Admission::Admitted(_) => "admitted",
            Admission::Refused => "refused",
        };
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("bulkhead", &self.bulkhead)
            .field("admission", &admission)
            .finish()
    }
}

impl<S, Request> Service<Request> for Bulkhead<S>
where
    S: Service<Request>,
    S::Error: IntoPolicyError,
{
    type Response = S::Response;
    type Error = PolicyError<<S::Error as IntoPolicyError>::Inner>;
    type Future = BulkheadFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.admission {
                Admission::Idle => {
                    let bulkhead = Arc::clone(&self.bulkhead);
                    let wait: Acquire = Box::pin(async move { bulkhead.acquire().await });
                    self.admission = Admission::Waiting(Waiting(Some(wait)));
                }
                Admission::Waiting(Waiting(wait)) => {
                    let Some(future) = wait.as_mut() else {
                        self.admission = Admission::Idle;
                        continue;
                    };
                    let acquired = std::task::ready!(future.as_mut().poll(cx));
                    // Finished: nothing left to run out on drop.
                    *wait = None;
                    self.admission = match acquired {
                        Ok(slot) => Admission::Admitted(slot),
                        Err(_) => Admission::Refused,
                    };
                }
                Admission::Admitted(_) => {
                    return self
                        .inner
                        .poll_ready(cx)
                        .map_err(IntoPolicyError::into_policy_error);
                }
                Admission::Refused => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match std::mem::replace(&mut self.admission, Admission::Idle) {
            Admission::Admitted(slot) => PolicyFuture::called(self.inner.call(request), slot),
            Admission::Refused => PolicyFuture::refused(Refusal::BulkheadFull),
            // Called without `poll_ready` having answered ready: no slot, so no call.
            Admission::Idle => PolicyFuture::refused(Refusal::BulkheadFull),
            Admission::Waiting(waiting) => {
                self.admission = Admission::Waiting(waiting);
                PolicyFuture::refused(Refusal::BulkheadFull)
            }
        }
    }
}

/// The response future of [`Bulkhead`]: holds the slot until the inner future completes.
pub type BulkheadFuture<F> = PolicyFuture<F, Slot>;

/// A slot is given back when dropped: the call has nothing more to tell the bulkhead.
impl<T, E> Answered<T, E> for Slot {
    fn answered(&mut self, _result: &Result<T, PolicyError<E>>) {}
}
