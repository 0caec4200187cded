//! A target's idle connections: a stack per event loop (`worker::index`), the newest on top.
//!
//! A connection is registered with the event loop that opened it, which then notices its
//! readiness without a wake-up from another thread; so each loop takes its own idle
//! connections, and another loop's only when the target's bound leaves no room for a new one
//! (`Stacks::Others`). With one event loop (`worker_model = "shared"`, or one worker) there is
//! one stack.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use super::owned::Conn;
use crate::body::RequestBody;
use crate::sync::lock;
use crate::worker;

/// Whose idle connections a checkout looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stacks {
    /// The current event loop's.
    Own,
    /// The other event loops'.
    Others,
}

/// A connection driven by hyper's client, or by the gateway's own (`owned`).
pub(super) enum Pooled {
    Hyper(SendRequest<RequestBody>),
    Owned(Conn),
}

impl Pooled {
    /// Whether it can no longer carry a request (closed by the target).
    fn is_closed(&self) -> bool {
        match self {
            Self::Hyper(sender) => sender.is_closed(),
            Self::Owned(conn) => !conn.is_open(),
        }
    }
}

/// An idle connection, and since when.
struct Idle {
    conn: Pooled,
    since: Instant,
}

type Stack = Mutex<VecDeque<Idle>>;

/// The idle connections of one target, a stack per event loop.
pub(super) struct IdleStacks {
    /// At least one; oldest first in each.
    stacks: Box<[Stack]>,
    /// Per stack, at most; the oldest is closed to make room.
    max_idle: usize,
    idle_timeout: Duration,
}

impl IdleStacks {
    /// Stacks for `loops` event loops, each of at most `max_idle` connections idle for less
    /// than `idle_timeout`.
    pub(super) fn new(loops: usize, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            stacks: (0..loops.max(1))
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            max_idle,
            idle_timeout,
        }
    }

    /// Idle connections that are still open, over every event loop.
    pub(super) fn open(&self) -> usize {
        self.stacks
            .iter()
            .map(|stack| {
                lock(stack)
                    .iter()
                    .filter(|entry| !entry.conn.is_closed())
                    .count()
            })
            .sum()
    }

    /// Idle connections, open or not, over every event loop.
    pub(super) fn len(&self) -> usize {
        self.stacks.iter().map(|stack| lock(stack).len()).sum()
    }

    /// The stacks `which` names: this event loop's, or the others'.
    fn stacks(&self, which: Stacks) -> impl Iterator<Item = &Stack> {
        let own = worker::own(&self.stacks);
        let want_own = which == Stacks::Own;
        self.stacks
            .iter()
            .filter(move |stack| std::ptr::eq(*stack, own) == want_own)
    }

    /// The newest idle connection of `which` that can take a request, for hyper's client (an
    /// owned one is handed to it); older ones past their idle time go.
    pub(super) fn checkout(&self, now: Instant, which: Stacks) -> Option<Pooled> {
        self.stacks(which)
            .find_map(|stack| self.checkout_from(stack, now))
    }

    fn checkout_from(&self, stack: &Stack, now: Instant) -> Option<Pooled> {
        loop {
            let conn = {
                let mut idle = lock(stack);
                let entry = idle.pop_back()?;
                if now.saturating_duration_since(entry.since) >= self.idle_timeout {
                    // The newest is past its time: so are all the others.
                    idle.clear();
                    return None;
                }
                entry.conn
            };
            let usable = match &conn {
                Pooled::Hyper(sender) => sender.is_ready(),
                Pooled::Owned(conn) => conn.is_open(),
            };
            if usable {
                return Some(conn);
            }
        }
    }

    /// The newest idle owned connection of `which` still open; older ones past their idle time
    /// go, and hyper's are left for requests with streamed bodies.
    pub(super) fn checkout_owned(&self, now: Instant, which: Stacks) -> Option<Conn> {
        self.stacks(which)
            .find_map(|stack| self.checkout_owned_from(stack, now))
    }

    fn checkout_owned_from(&self, stack: &Stack, now: Instant) -> Option<Conn> {
        let mut idle = lock(stack);
        loop {
            let newest = idle.back()?;
            if now.saturating_duration_since(newest.since) >= self.idle_timeout {
                idle.clear();
                return None;
            }
            let at = idle
                .iter()
                .rposition(|entry| matches!(entry.conn, Pooled::Owned(_)))?;
            let newest = at + 1 == idle.len();
            if let Some(Idle {
                conn: Pooled::Owned(conn),
                since,
            }) = idle.remove(at)
            {
                // The newest was within its time just above.
                if !newest && now.saturating_duration_since(since) >= self.idle_timeout {
                    // Past its time behind newer ones of hyper's: so are those older than it.
                    idle.drain(..at);
                    return None;
                }
                if conn.is_open() {
                    return Some(conn);
                }
            }
        }
    }

    /// Closes the oldest idle connection driven by hyper's client, if any (this event loop's
    /// first).
    pub(super) fn close_one_hyper(&self) {
        for stack in self.stacks(Stacks::Own).chain(self.stacks(Stacks::Others)) {
            let mut idle = lock(stack);
            if let Some(at) = idle
                .iter()
                .position(|entry| matches!(entry.conn, Pooled::Hyper(_)))
            {
                idle.remove(at);
                return;
            }
        }
    }

    /// `conn` free for the next request, on this event loop's stack; false when none is kept
    /// (`max_idle` 0).
    pub(super) fn put(&self, conn: Pooled) -> bool {
        if self.max_idle == 0 {
            return false;
        }
        let mut idle = lock(worker::own(&self.stacks));
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: crate::clock::now(),
        });
        true
    }

    /// Closes the connections idle past their time, or closed by the target.
    pub(super) fn expire(&self, now: Instant) {
        for stack in self.stacks.iter() {
            let mut idle = lock(stack);
            while idle.front().is_some_and(|entry| {
                now.saturating_duration_since(entry.since) >= self.idle_timeout
                    || entry.conn.is_closed()
            }) {
                idle.pop_front();
            }
        }
    }
}
