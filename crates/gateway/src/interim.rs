//! Interim (1xx) answers of an upstream on their way to the client (RFC 9110 §15.2: a proxy
//! forwards them). hyper's client hands each one to a callback registered on the upstream
//! request (`hyper::ext::on_informational`); the callback puts it in the client connection's
//! [`InterimSink`], which the owned HTTP/1.1 connection (`h1`) writes before the final answer.
//! A connection hyper serves has no sink (hyper's server cannot send a 1xx of ours).
//!
//! This module imports nothing of the gateway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use http::{HeaderMap, StatusCode};

use crate::sync::lock;

/// Interim answers kept per request at most; more are dropped (an upstream flooding 1xx heads).
const MAX_PENDING: usize = 16;

/// One interim answer: its status and fields.
#[derive(Debug, Clone)]
pub(crate) struct Interim {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Where a request's interim answers go: one per client connection, cloned into each request.
#[derive(Debug, Clone, Default)]
pub(crate) struct InterimSink(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    answers: Mutex<Vec<Interim>>,
    /// Whether `answers` holds any (read without the lock: most exchanges have none).
    any: AtomicBool,
    waker: AtomicWaker,
}

impl InterimSink {
    /// Has hyper's client hand the upstream's 1xx answers to `request` to this sink (101 is an
    /// upgrade, never forwarded as an interim answer).
    pub(crate) fn attach<B>(&self, request: &mut http::Request<B>) {
        let sink = self.clone();
        hyper::ext::on_informational(request, move |answer| {
            sink.push_answer(answer.status(), answer.headers().clone());
        });
    }

    /// An upstream's interim answer, to be written before the final one (the gateway's own
    /// client side reads them itself).
    pub(crate) fn push_answer(&self, status: StatusCode, mut headers: HeaderMap) {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        for name in [
            http::header::CONNECTION,
            http::header::TRANSFER_ENCODING,
            http::header::UPGRADE,
        ] {
            headers.remove(name);
        }
        self.push(Interim { status, headers });
    }

    fn push(&self, answer: Interim) {
        {
            let mut answers = lock(&self.0.answers);
            if answers.len() < MAX_PENDING {
                answers.push(answer);
            }
            self.0.any.store(true, Ordering::Release);
        }
        self.0.waker.wake();
    }

    /// The answers that came since the last call, or `Pending` (the task of `cx` is woken when
    /// one comes).
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Vec<Interim>> {
        // Registered before the flag is read: an answer pushed in between is not missed.
        self.0.waker.register(cx.waker());
        if !self.0.any.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        Poll::Ready(self.take())
    }

    /// The answers that came since the last take, without waiting (none: an empty list).
    pub(crate) fn take(&self) -> Vec<Interim> {
        if !self.0.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut answers = lock(&self.0.answers);
        self.0.any.store(false, Ordering::Release);
        std::mem::take(&mut answers)
    }

    /// Forgets whatever came for an exchange that is over.
    pub(crate) fn clear(&self) {
        drop(self.take());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn an_answer_wakes_the_waiting_connection_and_is_taken_once() {
        let sink = InterimSink::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(sink.poll_take(&mut cx).is_pending());
        sink.push(Interim {
            status: StatusCode::from_u16(103).unwrap_or(StatusCode::CONTINUE),
            headers: HeaderMap::new(),
        });
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        match sink.poll_take(&mut cx) {
            Poll::Ready(answers) => assert_eq!(answers[0].status.as_u16(), 103),
            Poll::Pending => panic!("the answer was lost"),
        }
        assert!(sink.poll_take(&mut cx).is_pending());
    }

    #[test]
    fn a_flood_of_interim_answers_is_bounded() {
        let sink = InterimSink::default();
        for _ in 0..100 {
            sink.push(Interim {
                status: StatusCode::PROCESSING,
                headers: HeaderMap::new(),
            });
        }
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        match sink.poll_take(&mut Context::from_waker(&waker)) {
            Poll::Ready(answers) => assert_eq!(answers.len(), MAX_PENDING),
            Poll::Pending => panic!("nothing kept"),
        }
    }
}
