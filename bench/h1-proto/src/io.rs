//! Reads and writes on a `TcpStream` through its readiness (`try_read`/`try_write_vectored`):
//! a system call only when the socket may be ready, and a timer only when the call would block.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

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

/// Appends what the socket has to `buf`: the number of bytes read, 0 at end of stream.
///
/// Through `AsyncRead` rather than `try_read_buf`: tokio forgets the socket's readiness after a
/// read that did not fill the buffer, so the next read waits for epoll instead of making a
/// `recv` that returns EAGAIN (one system call per read saved). The timer is only set when the
/// first poll finds nothing.
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    wait: Wait,
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
    match first {
        Some(outcome) => outcome,
        None => {
            let outcome = match wait {
                Wait::For(limit) => tokio::time::timeout(limit, read).await,
                Wait::Until(deadline) => tokio::time::timeout_at(deadline, read).await,
            };
            outcome.map_err(|_| timed_out())?
        }
    }
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
