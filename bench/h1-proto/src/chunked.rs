//! Where a chunked body ends, without decoding it.
//!
//! The proxy passes a chunked body through byte for byte (no re-framing), but it must still know
//! where the body ends: the bytes after it are the next request on the connection, and an
//! upstream connection is only reused once its response is over. `ChunkedScanner` walks the
//! framing (sizes, extensions, the CRLF after each chunk, the trailer section) and stops at the
//! end of the body. It is strict where hyper is strict: CRLF only (a bare LF is refused), hex
//! sizes that fit in 64 bits, bounded extensions and trailers.

/// Longest chunk extension accepted (after the `;`), per chunk.
const MAX_EXTENSION: u32 = 1024;
/// Longest trailer section accepted.
const MAX_TRAILERS: u32 = 8 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// No hex digit where a chunk size starts, or a byte that cannot follow one.
    BadSize,
    /// A chunk size above 2^64 - 1.
    SizeOverflow,
    /// A line that does not end in CRLF.
    BadLineEnd,
    /// An extension or the trailer section over its bound.
    TooLong,
    /// A trailer line that is not `name: value` (hyper checks them too).
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The hex digits of a chunk size.
    Size,
    /// Spaces or tabs after the size.
    SizeSpace,
    /// A chunk extension, up to CR.
    Extension,
    /// The LF ending a size line.
    SizeLf,
    /// Chunk data; `remaining` bytes to go.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    /// A trailer field's name, up to `:`.
    TrailerName,
    /// A trailer field's value, up to CR.
    TrailerValue,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    /// The body is over.
    Done,
}

/// Walks a chunked body fed in pieces; see the module doc.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    /// The size being read, then the data still to come in the current chunk.
    remaining: u64,
    /// Bytes of the current extension, or of the trailer section.
    counted: u32,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            remaining: 0,
            counted: 0,
        }
    }

    /// Whether the body's last byte has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next bytes of the body: returns how many of them belong to it (all of them
    /// unless the body ends inside `input`; then the rest is what follows the body).
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, ChunkedError> {
        let mut at = 0;
        while at < input.len() {
            if self.state == State::Data {
                // The data itself is skipped, not looked at.
                let available = (input.len() - at) as u64;
                let taken = self.remaining.min(available);
                self.remaining -= taken;
                at += taken as usize;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let byte = input[at];
            at += 1;
            self.state = match self.state {
                State::Size => match hex_value(byte) {
                    Some(digit) => {
                        if self.remaining > u64::MAX >> 4 {
                            return Err(ChunkedError::SizeOverflow);
                        }
                        self.remaining = self.remaining << 4 | u64::from(digit);
                        self.counted += 1;
                        State::Size
                    }
                    // `counted` holds the number of digits here.
                    None if self.counted == 0 => return Err(ChunkedError::BadSize),
                    None => self.after_size(byte)?,
                },
                State::SizeSpace => self.after_size(byte)?,
                State::Extension => match byte {
                    b'\r' => State::SizeLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {
                        self.counted += 1;
                        if self.counted > MAX_EXTENSION {
                            return Err(ChunkedError::TooLong);
                        }
                        State::Extension
                    }
                    _ => return Err(ChunkedError::BadSize),
                },
                State::SizeLf => {
                    if byte != b'\n' {
                        return Err(ChunkedError::BadLineEnd);
                    }
                    self.counted = 0;
                    if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                State::DataCr if byte == b'\r' => State::DataLf,
                State::DataLf if byte == b'\n' => State::Size,
                State::DataCr | State::DataLf => return Err(ChunkedError::BadLineEnd),
                State::TrailerStart if byte == b'\r' => State::EndLf,
                State::TrailerStart | State::TrailerName | State::TrailerValue => {
                    self.counted += 1;
                    if self.counted > MAX_TRAILERS {
                        return Err(ChunkedError::TooLong);
                    }
                    match (self.state, byte) {
                        (State::TrailerStart | State::TrailerName, _) if is_tchar(byte) => {
                            State::TrailerName
                        }
                        (State::TrailerName, b':') => State::TrailerValue,
                        (State::TrailerValue, b'\r') => State::TrailerLf,
                        (State::TrailerValue, b'\t' | b' '..=b'~' | 0x80..=0xff) => {
                            State::TrailerValue
                        }
                        (_, b'\n') => return Err(ChunkedError::BadLineEnd),
                        _ => return Err(ChunkedError::BadTrailer),
                    }
                }
                State::TrailerLf if byte == b'\n' => State::TrailerStart,
                State::TrailerLf => return Err(ChunkedError::BadLineEnd),
                State::EndLf if byte == b'\n' => {
                    self.state = State::Done;
                    return Ok(at);
                }
                State::EndLf => return Err(ChunkedError::BadLineEnd),
                State::Done => return Ok(at - 1),
                State::Data => unreachable_data(),
            };
        }
        Ok(at)
    }

    /// What may follow a chunk size (or the spaces after it).
    fn after_size(&mut self, byte: u8) -> Result<State, ChunkedError> {
        match byte {
            b' ' | b'\t' => Ok(State::SizeSpace),
            b';' => {
                self.counted = 0;
                Ok(State::Extension)
            }
            b'\r' => Ok(State::SizeLf),
            _ => Err(ChunkedError::BadSize),
        }
    }
}

/// `State::Data` is handled before the byte match; this keeps the match exhaustive without a
/// panic on the request path.
fn unreachable_data() -> State {
    State::Data
}

/// RFC 9110's `tchar`: what a field name is made of.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `body` whole, then byte by byte: both must agree.
    fn scan_all(body: &[u8]) -> Result<(usize, bool), ChunkedError> {
        let mut whole = ChunkedScanner::new();
        let taken = whole.scan(body)?;
        let mut piecewise = ChunkedScanner::new();
        let mut taken_piecewise = 0;
        for byte in body {
            if piecewise.is_done() {
                break;
            }
            taken_piecewise += piecewise.scan(std::slice::from_ref(byte))?;
        }
        assert_eq!(taken, taken_piecewise, "split scan of {body:?}");
        assert_eq!(whole.is_done(), piecewise.is_done());
        Ok((taken, whole.is_done()))
    }

    #[test]
    fn finds_the_end_of_a_body_and_leaves_what_follows() {
        let body = b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(scan_all(body), Ok((15, true)));
    }

    #[test]
    fn sizes_in_hex_extensions_and_trailers() {
        let body = b"1A;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0 ;last\r\nChecksum: 1\r\nX: y\r\n\r\n";
        assert_eq!(scan_all(body), Ok((body.len(), true)));
        let body = b"000f\r\n0123456789abcde\r\n0\r\n\r\n";
        assert_eq!(scan_all(body), Ok((body.len(), true)));
    }

    #[test]
    fn an_unfinished_body_takes_everything() {
        assert_eq!(scan_all(b"10\r\nonly part"), Ok((13, false)));
        assert_eq!(scan_all(b"0\r\n\r"), Ok((4, false)));
    }

    #[test]
    fn refuses_bad_framing() {
        assert_eq!(scan_all(b"\r\n"), Err(ChunkedError::BadSize));
        assert_eq!(scan_all(b"x\r\n"), Err(ChunkedError::BadSize));
        assert_eq!(scan_all(b"-1\r\n"), Err(ChunkedError::BadSize));
        assert_eq!(scan_all(b"5\nhello"), Err(ChunkedError::BadSize));
        assert_eq!(scan_all(b"5\r\nhelloX"), Err(ChunkedError::BadLineEnd));
        assert_eq!(scan_all(b"5\r\nhello\n"), Err(ChunkedError::BadLineEnd));
        assert_eq!(scan_all(b"0\r\n\n"), Err(ChunkedError::BadLineEnd));
        assert_eq!(scan_all(b"0\r\nX: y\n"), Err(ChunkedError::BadLineEnd));
        // Trailer lines are fields, as hyper reads them (found by tests/differential.rs).
        assert_eq!(
            scan_all(b"0\r\nTw 1\r\n\r\n"),
            Err(ChunkedError::BadTrailer)
        );
        assert_eq!(
            scan_all(b"0\r\n\xff: 1\r\n\r\n"),
            Err(ChunkedError::BadTrailer)
        );
        assert_eq!(
            scan_all(b"0\r\nT: \x1d\r\n\r\n"),
            Err(ChunkedError::BadTrailer)
        );
        assert_eq!(scan_all(b"0\r\n: 1\r\n\r\n"), Err(ChunkedError::BadTrailer));
        assert_eq!(scan_all(b"5 x\r\n"), Err(ChunkedError::BadSize));
        assert_eq!(scan_all(b"5;a\x01\r\n"), Err(ChunkedError::BadSize));
    }

    #[test]
    fn refuses_sizes_over_64_bits_and_long_extensions() {
        assert_eq!(
            scan_all(b"ffffffffffffffff\r\n"),
            Ok((18, false)),
            "2^64 - 1 still fits"
        );
        assert_eq!(
            scan_all(b"10000000000000000\r\n"),
            Err(ChunkedError::SizeOverflow)
        );
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(scan_all(&long), Err(ChunkedError::TooLong));
    }
}
