//! Futures put in boxes without being copied there.
//!
//! `Box::pin(future)` makes the future on the stack, then allocates and copies it: all of its
//! size, although a future not yet polled holds only its arguments — kilobytes for the
//! gateway's request futures (a connection's exchange, the call to the upstream), on every
//! request. [`boxed`] allocates first and makes the future there: with the box's place known
//! before the future is made, the compiler writes the arguments into the box (measured: 770
//! instructions less per proxied request; docs/benchmarks.md, session 14).
//!
//! This module imports nothing of the gateway.

use std::future::Future;
use std::pin::Pin;

/// The future `make` gives, made in its box.
#[inline(always)]
pub(crate) fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_boxed_future_runs_as_it_would_unboxed() {
        let mut log = Vec::new();
        let answer = boxed(|| async {
            log.push(1);
            tokio::task::yield_now().await;
            log.push(2);
            42
        })
        .await;
        assert_eq!((answer, log), (42, vec![1, 2]));
    }
}
