//! The gateway's clocks: wall-clock milliseconds for what leaves the process (cache entries,
//! health-check records, circuit transitions), and the monotonic millisecond [`Clock`] of target
//! state. This module imports nothing of the gateway.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch at `at` (0 before it).
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch at `time` (0 before it).
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The current time as an HTTP-date, made once a second per thread.
pub(crate) fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            let mut bytes = [0u8; 29];
            let len = text.len().min(29);
            bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
            *cached = (second, bytes);
        }
        cached.1
    })
}

/// Milliseconds on a [`Clock`]; 0 means "never".
pub(crate) type Millis = u64;

/// The gateway's clock for target state: milliseconds since the state registry was made, on
/// tokio's clock (so a paused test clock reaches it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// The instant the clock started.
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// `at` on this clock; never 0, which means "never".
    pub(crate) fn millis(&self, at: Instant) -> Millis {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}

/// Where [`now`] is read from on this thread.
#[derive(Debug, Clone, Copy)]
enum PollClock {
    /// Not inside [`one_clock_per_poll`]: every call reads the clock.
    Outside,
    /// Inside a poll that has not asked yet.
    Unread,
    /// Inside a poll that read it at this instant.
    Read(Instant),
}

thread_local! {
    static POLL_CLOCK: Cell<PollClock> = const { Cell::new(PollClock::Outside) };
}

/// The time now, as the request path sees it: inside a poll of [`one_clock_per_poll`], the
/// clock read once, when that poll first asks, and shared by everything else it does — a
/// request's arrival mark, its start, its attempt's end, the connection's and the upstream
/// connection's idle marks come two by two from the same poll (62 ns a read on this project's
/// benchmark machine, five per request before). Anywhere else, a read of tokio's clock.
///
/// As nginx's and libevent's cached time, it is as old as the poll's own work at most: a poll
/// does no waiting, and the event loop's lag monitor bounds how long one may run.
pub(crate) fn now() -> Instant {
    POLL_CLOCK.with(|clock| match clock.get() {
        PollClock::Read(at) => at,
        PollClock::Outside => Instant::now(),
        PollClock::Unread => {
            let at = Instant::now();
            clock.set(PollClock::Read(at));
            at
        }
    })
}

pin_project_lite::pin_project! {
    /// `future` with one reading of the clock per poll for [`now`] (a connection's task). A
    /// struct rather than an `async fn`: an `async fn`'s state keeps its argument and the
    /// pinned local it moves into side by side, which doubled an idle connection's task.
    pub(crate) struct OneClockPerPoll<F> {
        #[pin]
        future: F,
    }
}

/// `future`, with one reading of the clock per poll (see [`now`]).
pub(crate) fn one_clock_per_poll<F: Future>(future: F) -> OneClockPerPoll<F> {
    OneClockPerPoll { future }
}

impl<F: Future> Future for OneClockPerPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = PollScope::enter();
        self.project().future.poll(cx)
    }
}

/// One poll's scope: what the thread had before is put back when the poll ends, or unwinds.
struct PollScope {
    outer: PollClock,
}

impl PollScope {
    fn enter() -> Self {
        Self {
            outer: POLL_CLOCK.with(|clock| clock.replace(PollClock::Unread)),
        }
    }
}

impl Drop for PollScope {
    fn drop(&mut self) {
        POLL_CLOCK.with(|clock| clock.set(self.outer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits, without sleeping, until tokio's clock has moved past `at`.
    fn clock_moved_past(at: Instant) {
        while Instant::now() <= at {
            std::hint::spin_loop();
        }
    }

    #[tokio::test]
    async fn one_poll_reads_the_clock_once_and_the_next_poll_again() {
        let (first, same_poll, next_poll) = one_clock_per_poll(async {
            let first = now();
            clock_moved_past(first);
            let same_poll = now();
            tokio::task::yield_now().await;
            (first, same_poll, now())
        })
        .await;
        assert_eq!(same_poll, first, "the poll's reading is shared");
        assert!(next_poll > first, "a new poll reads the clock again");
    }

    #[tokio::test]
    async fn outside_a_poll_scope_every_call_reads_the_clock() {
        let first = now();
        clock_moved_past(first);
        assert!(now() > first);
        // Also after a scope has ended on this thread, and after one unwound.
        let inside = one_clock_per_poll(async { now() }).await;
        clock_moved_past(inside);
        assert!(now() > inside);
        let unwound = std::panic::catch_unwind(|| {
            let scoped = PollScope::enter();
            let at = now();
            drop(scoped);
            let _again = PollScope::enter();
            now();
            panic!("{at:?}");
        });
        assert!(unwound.is_err());
        let after = now();
        clock_moved_past(after);
        assert!(
            now() > after,
            "the unwound scope put the thread back outside"
        );
    }

    #[tokio::test]
    async fn a_nested_scope_gives_the_outer_its_reading_back() {
        let (outer, nested, outer_again) = one_clock_per_poll(async {
            let outer = now();
            clock_moved_past(outer);
            let nested = one_clock_per_poll(async { now() }).await;
            (outer, nested, now())
        })
        .await;
        assert!(nested > outer, "the nested scope reads its own");
        assert_eq!(outer_again, outer);
    }
}
