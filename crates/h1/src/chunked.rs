//! A chunked request body (RFC 9112 §7.1), read from the start of a connection's buffer as its
//! bytes arrive: data pieces as slices of the buffer (no copy), then the trailer fields.
//!
//! Strict where hyper is lenient, never the other way: every line ends with CRLF, a chunk size
//! is 1 to 16 hex digits, an extension holds only visible ASCII, space and tab, a size line is
//! at most [`MAX_LINE`] bytes and the trailer section at most [`MAX_TRAILERS`]. Anything else is
//! an error, after which the connection must close (its framing is lost).

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// The longest chunk-size line (extensions included), its CRLF included.
pub const MAX_LINE: usize = 4096;
/// The longest trailer section, its final CRLF included.
pub const MAX_TRAILERS: usize = 8192;
/// Trailer fields read at most.
const MAX_TRAILER_FIELDS: usize = 32;

/// What the next bytes of a chunked body held.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The end of the body, with its trailer fields (empty: none).
    End(HeaderMap),
}

/// Why a chunked body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk size line is malformed")]
    BadSize,
    #[error("a chunk size line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("a chunk's data does not end with CRLF")]
    BadDataEnd,
    #[error("the trailer section is malformed")]
    BadTrailers,
    #[error("the trailer section is longer than {MAX_TRAILERS} bytes")]
    TrailersTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    /// The body has ended.
    Done,
}

/// Reads one chunked body.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: State,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next piece of the body at the start of `buf`, taken out of it; `Ok(None)` when
    /// `buf` holds too little to tell (read more), or the body has ended.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Size => {
                    let Some(line_end) = find_crlf(buf, MAX_LINE)? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&buf[..line_end])?;
                    let _ = buf.split_to(line_end + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Some(Chunk::Data(data)));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(ChunkError::BadDataEnd);
                        }
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::BadDataEnd);
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    if buf.len() < 2 {
                        if buf
                            .first()
                            .is_some_and(|&b| b != b'\r' && !b.is_ascii_graphic())
                        {
                            return Err(ChunkError::BadTrailers);
                        }
                        return Ok(None);
                    }
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        self.state = State::Done;
                        return Ok(Some(Chunk::End(HeaderMap::new())));
                    }
                    let Some(end) = find_section_end(buf)? else {
                        return Ok(None);
                    };
                    let trailers = trailer_fields(&buf[..end])?;
                    let _ = buf.split_to(end);
                    self.state = State::Done;
                    return Ok(Some(Chunk::End(trailers)));
                }
            }
        }
    }
}

/// Where the first CRLF of `buf` starts, if within `limit` bytes; a lone CR or LF is an error.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, ChunkError> {
    match memchr::memchr2(b'\r', b'\n', buf) {
        Some(at) if buf[at] == b'\n' => Err(ChunkError::BadSize),
        Some(at) if at + 2 > limit => Err(ChunkError::LineTooLong),
        Some(at) => match buf.get(at + 1) {
            Some(b'\n') => Ok(Some(at)),
            Some(_) => Err(ChunkError::BadSize),
            None => Ok(None),
        },
        None if buf.len() + 2 > limit => Err(ChunkError::LineTooLong),
        None => Ok(None),
    }
}

/// A chunk-size line without its CRLF: hex digits, then nothing or extensions.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(ChunkError::BadSize);
    }
    let rest = &line[digits..];
    // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ): what follows the size
    // is nothing, or optional whitespace then ';' and visible text (extensions are ignored).
    let ext = rest.trim_ascii_start();
    if !(rest.is_empty() || ext.starts_with(b";"))
        || !ext
            .iter()
            .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
    {
        return Err(ChunkError::BadSize);
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = (size << 4) | u64::from(digit);
    }
    Ok(size)
}

/// The end of the trailer section (just past its empty line), within [`MAX_TRAILERS`].
fn find_section_end(buf: &[u8]) -> Result<Option<usize>, ChunkError> {
    match memchr::memmem::find(buf, b"\r\n\r\n") {
        Some(at) if at + 4 > MAX_TRAILERS => Err(ChunkError::TrailersTooLong),
        Some(at) => Ok(Some(at + 4)),
        None if buf.len() >= MAX_TRAILERS => Err(ChunkError::TrailersTooLong),
        None => Ok(None),
    }
}

/// The trailer fields of a whole section (its empty line included).
fn trailer_fields(section: &[u8]) -> Result<HeaderMap, ChunkError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) if used == section.len() => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| ChunkError::BadTrailers)?;
                let value =
                    HeaderValue::from_bytes(field.value).map_err(|_| ChunkError::BadTrailers)?;
                map.append(name, value);
            }
            Ok(map)
        }
        _ => Err(ChunkError::BadTrailers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything `raw` decodes to when it arrives `step` bytes at a time.
    fn decode(raw: &[u8], step: usize) -> Result<(Vec<u8>, HeaderMap, Vec<u8>), ChunkError> {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let step = step.max(1);
        for (index, piece) in raw.chunks(step).enumerate() {
            buf.extend_from_slice(piece);
            while let Some(chunk) = decoder.next(&mut buf)? {
                match chunk {
                    Chunk::Data(data) => body.extend_from_slice(&data),
                    Chunk::End(trailers) => {
                        // What follows the body: the rest of this read and every later one.
                        let mut rest = buf.to_vec();
                        rest.extend_from_slice(&raw[((index + 1) * step).min(raw.len())..]);
                        return Ok((body, trailers, rest));
                    }
                }
            }
        }
        Err(ChunkError::BadSize)
    }

    #[test]
    fn chunks_arrive_whole_whatever_the_reads() {
        let raw =
            b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\nA \t; x\r\n0123456789\r\n0\r\n\r\nGET /next";
        for step in [1, 2, 3, 7, 64, raw.len()] {
            let (body, trailers, rest) = decode(raw, step).expect("decoded");
            assert_eq!(body, b"hello world0123456789", "step {step}");
            assert!(trailers.is_empty());
            assert_eq!(rest, b"GET /next", "what follows the body stays");
        }
    }

    #[test]
    fn trailers_are_read_as_fields() {
        let raw = b"3\r\nabc\r\n0\r\nChecksum: 42\r\nX-More: a\r\n\r\n";
        for step in [1, 5, raw.len()] {
            let (body, trailers, rest) = decode(raw, step).expect("decoded");
            assert_eq!(body, b"abc");
            assert_eq!(trailers["checksum"], "42");
            assert_eq!(trailers["x-more"], "a");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn malformed_framing_is_refused() {
        for (raw, error) in [
            (&b"5\nhello\r\n0\r\n\r\n"[..], ChunkError::BadSize),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::BadDataEnd),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkError::BadDataEnd),
            (b"\r\nhello\r\n", ChunkError::BadSize),
            (b"-5\r\n", ChunkError::BadSize),
            (b"0x5\r\n", ChunkError::BadSize),
            (b"5 5\r\n", ChunkError::BadSize),
            (b"5\rx", ChunkError::BadSize),
            (b"5;\x01\r\n", ChunkError::BadSize),
            (b"10000000000000000\r\n", ChunkError::BadSize),
            (b"0\r\nBad Field: x\r\n\r\n", ChunkError::BadTrailers),
            (b"0\r\n folded: x\r\n\r\n", ChunkError::BadTrailers),
        ] {
            assert_eq!(
                decode(raw, raw.len()).err(),
                Some(error),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let long_line = [b"5;".as_slice(), &[b'a'; MAX_LINE]].concat();
        assert_eq!(decode(&long_line, 100).err(), Some(ChunkError::LineTooLong));
        let mut long_trailers = b"0\r\n".to_vec();
        for n in 0..1000 {
            long_trailers.extend_from_slice(format!("X-{n}: yyyyyyyy\r\n").as_bytes());
        }
        assert_eq!(
            decode(&long_trailers, 512).err(),
            Some(ChunkError::TrailersTooLong)
        );
    }

    #[test]
    fn the_largest_size_is_read_exactly() {
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.next(&mut buf),
            Ok(Some(Chunk::Data(Bytes::from_static(b"ab"))))
        );
        assert_eq!(decoder.state, State::Data(u64::MAX - 2));
    }
}
