//! Reads (through tokio's `AsyncRead`) and writes (`try_write`, then readiness) on a
//! `TcpStream`: a system call only when the socket may be ready, and a timer only when a call
//! would block (or, with `TimerMode::Ticks`, one timer per connection).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Spare room kept in a read buffer before a read.
const READ_ROOM: usize = 4 * 1024;
/// What a buffer grows by when it has less room than `READ_ROOM`.
const READ_GROWTH: usize = 16 * 1024;

/// How long a wait for a socket may last.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// This long for this one wait.
    For(Duration),
    /// Until a deadline shared by several waits (a head's read).
    Until(Instant),
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

async fn wait_for<F: Future<Output = io::Result<()>>>(ready: F, wait: Wait) -> io::Result<()> {
    let outcome = match wait {
        Wait::For(limit) => tokio::time::timeout(limit, ready).await,
        Wait::Until(deadline) => tokio::time::timeout_at(deadline, ready).await,
    };
    outcome.map_err(|_| timed_out())?
}

/// How reads are bounded in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    /// A tokio `timeout` around each read that would block: exact, but a timer inserted into
    /// and removed from tokio's wheel (and a clock read) per wait.
    PerWait,
    /// One timer per connection that ticks (`Timeouts::tick`) while the connection lives; a
    /// wait ends after `limit / tick` ticks without progress. Coarse (within one tick), and
    /// nothing per request but a poll of an already armed timer.
    Ticks,
}

/// A connection's read timer (see `TimerMode`).
#[derive(Debug)]
pub struct Watch {
    mode: TimerMode,
    tick: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bumped by reads that move the exchange on; `seen` is its value at the last tick.
    progress: u64,
    seen: u64,
    /// Ticks in a row without progress.
    quiet: u32,
}

impl Watch {
    pub fn new(mode: TimerMode, tick: Duration) -> Self {
        let sleep = (mode == TimerMode::Ticks).then(|| Box::pin(tokio::time::sleep(tick)));
        Self {
            mode,
            tick,
            sleep,
            progress: 0,
            seen: 0,
            quiet: 0,
        }
    }

    pub fn mode(&self) -> TimerMode {
        self.mode
    }

    /// Something happened that restarts the count (a request began, bytes of a body came).
    pub fn progress(&mut self) {
        self.progress = self.progress.wrapping_add(1);
    }

    /// Polls the tick timer: `Ready` once `limit` ticks passed without progress.
    fn poll_expired(&mut self, context: &mut Context<'_>, limit: Duration) -> Poll<()> {
        let Some(sleep) = self.sleep.as_mut() else {
            return Poll::Pending;
        };
        let allowed = limit
            .as_millis()
            .div_ceil(self.tick.as_millis().max(1))
            .max(1);
        while sleep.as_mut().poll(context).is_ready() {
            if self.progress == self.seen {
                self.quiet += 1;
            } else {
                self.seen = self.progress;
                self.quiet = 0;
            }
            if u128::from(self.quiet) >= allowed {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(Instant::now() + self.tick);
        }
        Poll::Pending
    }
}

/// Appends what the socket has to `buf`: the number of bytes read, 0 at end of stream. A read
/// with `progress` moves the connection's `Watch` on (a head's partial reads do not: a client
/// sending a byte now and then must still finish its head in time).
///
/// Through `AsyncRead` rather than `try_read_buf`: tokio forgets the socket's readiness after a
/// read that did not fill the buffer, so the next read waits for epoll instead of making a
/// `recv` that returns EAGAIN (one system call per read saved). A per-wait timer is only set
/// when the first poll finds nothing.
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    watch: &mut Watch,
    wait: Wait,
    progress: bool,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_GROWTH);
    }
    let mut read = std::pin::pin!(stream.read_buf(buf));
    let first = std::future::poll_fn(|context| match read.as_mut().poll(context) {
        Poll::Ready(outcome) => Poll::Ready(Some(outcome)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    let outcome = match (first, watch.mode) {
        (Some(outcome), _) => outcome,
        (None, TimerMode::PerWait) => {
            let outcome = match wait {
                Wait::For(limit) => tokio::time::timeout(limit, read).await,
                Wait::Until(deadline) => tokio::time::timeout_at(deadline, read).await,
            };
            outcome.map_err(|_| timed_out())?
        }
        (None, TimerMode::Ticks) => {
            let limit = match wait {
                Wait::For(limit) => limit,
                Wait::Until(deadline) => deadline.saturating_duration_since(Instant::now()),
            };
            std::future::poll_fn(|context| {
                if let Poll::Ready(outcome) = read.as_mut().poll(context) {
                    return Poll::Ready(outcome);
                }
                watch
                    .poll_expired(context, limit)
                    .map(|()| Err(timed_out()))
            })
            .await
        }
    };
    if progress && matches!(outcome, Ok(read) if read > 0) {
        watch.progress();
    }
    outcome
}

/// Writes all of `bytes`.
pub async fn write_all(stream: &TcpStream, mut bytes: &[u8], wait: Wait) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                wait_for(stream.writable(), wait).await?;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
