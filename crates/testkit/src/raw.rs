//! Raw HTTP/1.1 over a plain socket: for what a client library would hide (how a connection
//! ends, a malformed head, a slow one).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Writes raw bytes to `address` and reads until the peer closes or `timeout` passes; which of
/// the two happened is not told (see [`raw_exchange_until_end`] for that).
pub fn raw_exchange(address: SocketAddr, request: &[u8], timeout: Duration) -> String {
    raw_exchange_until_end(address, request, timeout).answer
}

/// How a raw exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEnd {
    /// The peer closed the connection (end of stream).
    Closed,
    /// The peer reset the connection.
    Reset,
    /// The reader's own timeout passed with the connection still open.
    TimedOut,
}

/// What a raw exchange read, how it ended, and when.
#[derive(Debug)]
pub struct RawExchange {
    /// Everything read, as text.
    pub answer: String,
    /// How it ended.
    pub end: RawEnd,
    /// From the request's last byte written to the end.
    pub after: Duration,
}

/// Writes raw bytes to `address` and reads until the peer closes or resets the connection, or
/// until `timeout` (counted from the request's last byte, for the whole read) passes.
pub fn raw_exchange_until_end(
    address: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> RawExchange {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(request).unwrap();
    let written = std::time::Instant::now();
    let deadline = written + timeout;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    let end = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break RawEnd::TimedOut;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => break RawEnd::Closed,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(error) => match error.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    break RawEnd::TimedOut
                }
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    break RawEnd::Reset
                }
                std::io::ErrorKind::Interrupted => {}
                _ => panic!("reading from {address}: {error}"),
            },
        }
    };
    RawExchange {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        end,
        after: written.elapsed(),
    }
}

/// The status code of the first response in a raw answer.
pub fn raw_status(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The body of the first response in a raw answer (after the blank line).
pub fn raw_body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Reads one HTTP/1.1 response with a Content-Length from `stream`; `None` if the peer closed
/// first. Returns the head and body as text.
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return Ok(Some(
                    String::from_utf8_lossy(&data[..end + 4 + length]).into_owned(),
                ));
            }
        }
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Ok(None);
        }
        data.extend_from_slice(&buffer[..n]);
    }
}
