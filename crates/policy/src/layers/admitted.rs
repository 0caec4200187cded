//! The response future every admitting layer returns: the inner call with what the policy
//! holds for it, or the refusal decided in `call`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::error::Refusal;
use super::{IntoPolicyError, PolicyError};

/// What a policy holds for a call it admitted (a slot, a permit, nothing), and what it does
/// when the call answers. The guard is dropped right after [`answered`](Self::answered), or
/// without it when the call is abandoned, so what it holds is given back either way.
pub trait Answered<T, E> {
    /// The admitted call answered `result`.
    fn answered(&mut self, result: &Result<T, PolicyError<E>>);
}

/// Nothing held (the rate limit decides once, at the call).
impl<T, E> Answered<T, E> for () {
    fn answered(&mut self, _result: &Result<T, PolicyError<E>>) {}
}

/// The response future of the admitting layers: the inner future with the guard `G` of its
/// admission until it answers, or the refusal decided when the call was made (answered at once,
/// the inner service never called).
pub struct PolicyFuture<F, G> {
    state: State<F, G>,
}

enum State<F, G> {
    Called {
        future: Pin<Box<F>>,
        /// Taken when the call answers.
        guard: Option<G>,
    },
    Refused(Refusal),
}

impl<F, G> PolicyFuture<F, G> {
    pub(crate) fn called(future: F, guard: G) -> Self {
        Self {
            state: State::Called {
                future: Box::pin(future),
                guard: Some(guard),
            },
        }
    }

    pub(crate) fn refused(refusal: Refusal) -> Self {
        Self {
            state: State::Refused(refusal),
        }
    }
}

impl<F, G> fmt::Debug for PolicyFuture<F, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Refused(_) => "refused",
        };
        f.debug_struct("PolicyFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, G, T, E> Future for PolicyFuture<F, G>
where
    F: Future<Output = Result<T, E>>,
    E: IntoPolicyError,
    G: Answered<T, E::Inner> + Unpin,
{
    type Output = Result<T, PolicyError<E::Inner>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Called { future, guard } => {
                let result = std::task::ready!(future.as_mut().poll(cx))
                    .map_err(IntoPolicyError::into_policy_error);
                if let Some(mut guard) = guard.take() {
                    guard.answered(&result);
                }
                Poll::Ready(result)
            }
            State::Refused(refusal) => Poll::Ready(Err(refusal.into_error())),
        }
    }
}
