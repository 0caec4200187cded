//! Reads and writes on a `TcpStream` through its readiness (`try_read`/`try_write_vectored`):
//! a system call only when the socket may be ready, and a timer only when the call would block.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::BytesMut;
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

async fn wait_for<F: std::future::Future<Output = io::Result<()>>>(
    ready: F,
    wait: Wait,
) -> io::Result<()> {
    let outcome = match wait {
        Wait::For(limit) => tokio::time::timeout(limit, ready).await,
        Wait::Until(deadline) => tokio::time::timeout_at(deadline, ready).await,
    };
    outcome.map_err(|_| timed_out())?
}

/// Appends what the socket has to `buf`: the number of bytes read, 0 at end of stream.
pub async fn read_more(stream: &TcpStream, buf: &mut BytesMut, wait: Wait) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_GROWTH);
    }
    loop {
        match stream.try_read_buf(buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                wait_for(stream.readable(), wait).await?;
            }
            outcome => return outcome,
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

/// Writes all of `slices`, one `writev` when the socket takes it all.
pub async fn write_all_vectored(
    stream: &TcpStream,
    mut slices: &mut [IoSlice<'_>],
    wait: Wait,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match stream.try_write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                wait_for(stream.writable(), wait).await?;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
