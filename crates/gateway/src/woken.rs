//! A future polled only when it was woken, for one that waits on something rare (a deadline, a
//! shutdown signal) in the same task as a busy one.
//!
//! A task polls every future it is made of each time it wakes, whichever one woke it. A client
//! connection's task wakes a few times per request for its I/O, and its watchdog (a timer) and
//! the drain signal (a channel) would be polled each time for nothing: the timer's and the
//! channel's checks cost more than the request's own work in hyper's dispatcher at that point.
//! [`WokenOnly`] gives its future a waker of its own and polls it only after that waker fired.
//!
//! This module imports nothing of the gateway.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// A future polled by [`WokenOnly::poll_if_woken`] only when it asked to be.
pub(crate) struct WokenOnly<F> {
    future: F,
    signal: Arc<Signal>,
    /// The future's own waker (made once): it marks the signal and wakes the task.
    waker: Waker,
}

/// Whether the future woke since its last poll, and the task to wake when it does.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> WokenOnly<F> {
    /// Wraps `future`; its first poll always happens.
    pub(crate) fn new(future: F) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&signal));
        Self {
            future,
            signal,
            waker,
        }
    }

    /// Polls the future if it was woken since its last poll (or never polled), else `Pending`.
    /// The task of `cx` is the one woken next time.
    pub(crate) fn poll_if_woken(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read: a wake between the two is not lost.
        self.signal.task.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut self.future).poll(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_future_is_polled_once_woken_and_not_before() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&polls);
        let mut sleep = Box::pin(tokio::time::sleep(Duration::from_secs(5)));
        let mut gated = WokenOnly::new(Box::pin(std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            sleep.as_mut().poll(cx)
        })));
        let mut busy = 0;
        let finished = std::future::poll_fn(|cx| {
            if gated.poll_if_woken(cx).is_ready() {
                return Poll::Ready(busy);
            }
            // A busy neighbour: wakes the task again and again (as a connection's I/O does),
            // then lets it sleep, so that the paused clock can move on to the timer.
            if busy < 100 {
                busy += 1;
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        });
        let busy_polls = tokio::time::timeout(Duration::from_secs(10), finished)
            .await
            .expect("the gated sleep ends");
        assert_eq!(busy_polls, 100);
        // Its first poll, and the one after its timer fired.
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
