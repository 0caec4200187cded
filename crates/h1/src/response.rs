//! A response head read by sekisho's own HTTP/1.1 client side: parsed with `httparse` (as
//! hyper's client does) into an `http::Response` whose header values are slices of the bytes
//! read, with the body's framing decided by RFC 9112 §6.3.
//!
//! The gateway writes requests to its targets itself (no upgrade, no `Expect`, no
//! `Transfer-Encoding` of its own), so a response is either interim (1xx, handed on), or final
//! with one of four framings. What hyper's client refuses, this refuses too: a version other
//! than 1.0 or 1.1, a status below 100, a malformed field, `Content-Length` values that differ
//! or are not digits, obs-fold, more than [`MAX_FIELDS`] fields, a head over [`MAX_HEAD`].

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::header;
use http::{HeaderMap, Response, StatusCode, Version};

use crate::head::{content_length, Fields, MAX_FIELDS};
use crate::names::eq_lower;
use crate::raw::{value_at, RawFields};

/// The longest response head read (hyper's client reads up to ≈ 400 KiB before it gives up).
pub const MAX_HEAD: usize = 400 * 1024;

/// How the body of a final answer is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, whatever the fields say (a `HEAD` request, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`: read with [`crate::ChunkedDecoder`].
    Chunked,
    /// Everything until the target closes the connection.
    UntilClose,
}

/// Why a response head cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the upstream's response head is malformed")]
    Malformed,
    #[error("the upstream's response head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("the upstream's response has more than {MAX_FIELDS} header fields")]
    TooManyFields,
    #[error("the upstream's response has an invalid Content-Length")]
    BadLength,
    #[error("the upstream switched protocols (101) without being asked to")]
    UnaskedUpgrade,
}

/// A parsed response head, its fields in a [`Fields`].
#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes of the head, final empty line included.
    pub len: usize,
    pub status: StatusCode,
    pub version: Version,
    /// How the body is delimited (meaningless for an interim answer).
    pub framing: Framing,
    /// The connection can carry another request once this answer's body is read.
    pub keep_alive: bool,
    /// Its `Connection` field names other fields (hop-by-hop for this answer alone).
    lists_fields: bool,
}

/// Fields an answer's map has room for beyond its own.
pub(crate) const ROOM_TO_ADD: usize = 6;

impl ResponseHead {
    /// An interim answer (1xx): another head follows it.
    pub fn is_interim(&self) -> bool {
        self.status.is_informational()
    }

    /// The response, its values slices of `bytes` (the head's own bytes), its fields taken from
    /// `fields`.
    pub fn response(
        &self,
        bytes: &Bytes,
        fields: &mut Fields,
    ) -> Result<Response<()>, ResponseError> {
        // Room for what the gateway adds on the way down (`X-Request-Id`, `RateLimit-*`,
        // `Cache-Status`) without growing the map: a map filled to its capacity rehashes into a
        // new allocation on the next insert (≈ 800 instructions on every proxied request).
        let mut headers = crate::maps::map_with_room(fields.len() + ROOM_TO_ADD);
        for (name, value) in fields.drain(..) {
            headers.append(
                name,
                value_at(bytes, value).ok_or(ResponseError::Malformed)?,
            );
        }
        Ok(self.bare(headers))
    }

    /// The response with its fields left as read (`bytes` the head's own bytes): an empty map
    /// with room for what the gateway adds, and the fields as [`RawFields`] — the list taken
    /// from `fields`, which gets a spare one. Only for a final answer whose `Connection` field
    /// names no other field (only a map can leave those out): otherwise `bytes` come back.
    pub fn raw(
        &self,
        bytes: Bytes,
        fields: &mut Fields,
    ) -> Result<(Response<()>, RawFields), Bytes> {
        if self.lists_fields || self.is_interim() {
            return Err(bytes);
        }
        let (raw, map) = RawFields::new(bytes, fields, ROOM_TO_ADD);
        Ok((self.bare(map), raw))
    }

    fn bare(&self, headers: HeaderMap) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = headers;
        response
    }
}

/// Parses the response head at the start of `buf` (the answer to a `HEAD` request when
/// `after_head`); its fields go to `fields` (emptied first). `Ok(None)`: not a whole head yet.
pub fn parse_response(
    buf: &[u8],
    after_head: bool,
    fields: &mut Fields,
) -> Result<Option<ResponseHead>, ResponseError> {
    let mut array = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut array,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(ResponseError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyFields),
        Err(_) => return Err(ResponseError::Malformed),
    };
    if len > MAX_HEAD {
        return Err(ResponseError::TooLarge);
    }
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(ResponseError::Malformed),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ResponseError::Malformed)?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ResponseError::UnaskedUpgrade);
    }
    fields.clear();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_coded = false;
    let mut close = false;
    let mut keep_alive_asked = false;
    let mut lists_fields = false;
    for field in response.headers.iter() {
        let name = crate::names::field_name(field.name.as_bytes())
            .map_err(|_| ResponseError::Malformed)?;
        let value = field.value;
        if name == header::CONTENT_LENGTH {
            // hyper's rule: every value (a list too) the same number.
            for part in value.split(|&b| b == b',') {
                let parsed = content_length(part.trim_ascii()).ok_or(ResponseError::BadLength)?;
                if length.is_some_and(|earlier| earlier != parsed) {
                    return Err(ResponseError::BadLength);
                }
                length = Some(parsed);
            }
        } else if name == header::TRANSFER_ENCODING {
            transfer_coded = true;
            // The final coding decides; a later field's codings come after an earlier one's.
            // A value that is not visible ASCII names no coding hyper knows: not chunked.
            let text = value
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
            chunked = text
                && value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| eq_lower(last.trim_ascii(), b"chunked"));
        } else if name == header::CONNECTION {
            for option in value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                let closes = eq_lower(option, b"close");
                let keeps = eq_lower(option, b"keep-alive");
                close |= closes;
                keep_alive_asked |= keeps;
                lists_fields |= !(closes || keeps || option.is_empty());
            }
        }
        let start = value.as_ptr() as usize - buf.as_ptr() as usize;
        fields.push((name, start..start + value.len()));
    }
    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_asked);
    let framing = if status.is_informational()
        || after_head
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if transfer_coded {
        if version == Version::HTTP_10 {
            // Transfer codings are HTTP/1.1's (RFC 9112 §6.1): hyper refuses them here too.
            return Err(ResponseError::Malformed);
        }
        if length.is_some() {
            // Both: the coding wins and the connection is not trusted again (§6.3, item 3).
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::UntilClose
        }
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(ResponseHead {
        len,
        status,
        version,
        framing,
        keep_alive,
        lists_fields,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::spare_boxes;
    use http::header::{HeaderName, HeaderValue};

    fn read(raw: &[u8], after_head: bool) -> Result<ResponseHead, ResponseError> {
        let mut fields = Fields::new();
        parse_response(raw, after_head, &mut fields).map(|head| match head {
            Some(head) => head,
            None => panic!("partial: {}", String::from_utf8_lossy(raw)),
        })
    }

    /// A whole head's parse, its fields into `fields`.
    fn whole(raw: &[u8], fields: &mut Fields) -> ResponseHead {
        match parse_response(raw, false, fields) {
            Ok(Some(head)) => head,
            other => panic!("{other:?}: {}", String::from_utf8_lossy(raw)),
        }
    }

    /// What the gateway adds to an answer on its way down (`X-Request-Id`, three `RateLimit-*`
    /// fields, `Cache-Status`) fits without the map growing (a rehash into a new allocation).
    #[test]
    fn an_answers_map_has_room_for_the_gateways_fields() -> Result<(), ResponseError> {
        let raw =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\ndate: x\r\n\r\n";
        let mut fields = Fields::new();
        let Some(head) = parse_response(raw, false, &mut fields)? else {
            panic!("a whole head read as partial");
        };
        let bytes = Bytes::copy_from_slice(raw);
        let response = head.response(&bytes, &mut fields)?;
        let headers = response.headers();
        assert_eq!(headers.len(), 3);
        assert!(
            headers.capacity() - headers.len() >= 5,
            "room for {} more",
            headers.capacity() - headers.len()
        );
        Ok(())
    }

    #[test]
    fn a_plain_answer_is_read_with_its_fields_as_slices() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: one\r\nx-a: two\r\n\r\nhello";
        let mut fields = Fields::new();
        let head = parse_response(raw, false, &mut fields)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("not read"));
        assert_eq!(head.len, raw.len() - 5);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        let bytes = Bytes::copy_from_slice(&raw[..head.len]);
        let response = head
            .response(&bytes, &mut fields)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 200);
        let values: Vec<_> = response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["one", "two"]);
        assert!(fields.is_empty());
    }

    #[test]
    fn a_partial_head_asks_for_more() {
        let mut fields = Fields::new();
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false, &mut fields),
            Ok(None)
        ));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&[u8], bool, Framing, bool); 9] = [
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
                false,
                Framing::None,
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\n\r\n",
                false,
                Framing::None,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                true,
                Framing::None,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Chunked,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                Framing::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                false,
                Framing::UntilClose,
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                Framing::Length(2),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
                false,
                Framing::Length(2),
                true,
            ),
        ];
        for (raw, after_head, framing, keep_alive) in cases {
            let head = read(raw, after_head).unwrap_or_else(|e| panic!("{e}"));
            let text = String::from_utf8_lossy(raw);
            assert_eq!(head.framing, framing, "{text}");
            assert_eq!(head.keep_alive, keep_alive, "{text}");
        }
        let closing = read(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(closing.is_ok_and(|head| !head.keep_alive));
    }

    #[test]
    fn what_hyper_refuses_is_refused() {
        let cases: [(&[u8], ResponseError); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                ResponseError::BadLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
                ResponseError::BadLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
                ResponseError::BadLength,
            ),
            (b"HTTP/2.0 200 OK\r\n\r\n", ResponseError::Malformed),
            (b"HTTP/1.1 099 Low\r\n\r\n", ResponseError::Malformed),
            (
                b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
                ResponseError::Malformed,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                ResponseError::UnaskedUpgrade,
            ),
        ];
        for (raw, error) in cases {
            assert_eq!(
                read(raw, false).err(),
                Some(error),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let equal = read(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\n",
            false,
        );
        assert!(equal.is_ok_and(|head| head.framing == Framing::Length(2)));
    }

    #[test]
    fn a_coding_that_is_not_text_is_not_chunked() {
        // hyper reads the codings only of a value that is visible ASCII (found by the
        // differential test): the same answer must be framed the same way by both.
        let head = read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: g\xe4ip, chunked\r\n\r\n",
            false,
        );
        assert!(head.is_ok_and(|head| head.framing == Framing::UntilClose && !head.keep_alive));
    }

    #[test]
    fn an_interim_answer_is_told_apart() {
        let head = read(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
            false,
        );
        assert!(head.is_ok_and(|head| head.is_interim()));
    }

    #[test]
    fn too_many_fields_or_bytes_are_refused() {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for index in 0..=MAX_FIELDS {
            raw.extend_from_slice(format!("x-{index}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(read(&raw, false).err(), Some(ResponseError::TooManyFields));
        let mut long = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        let mut fields = Fields::new();
        assert_eq!(
            parse_response(&long, false, &mut fields).err(),
            Some(ResponseError::TooLarge)
        );
    }

    #[test]
    fn raw_fields_are_the_end_to_end_ones_as_read() {
        let raw = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: keep-alive\r\nServer: s\r\n\
                    Transfer-Encoding: chunked\r\nx-a: 2\r\n\r\n";
        let mut fields = Fields::new();
        let head = whole(raw, &mut fields);
        let bytes = Bytes::copy_from_slice(raw);
        let Ok((response, raw_fields)) = head.raw(bytes, &mut fields) else {
            panic!("a plain answer's fields stay as read");
        };
        // The map is empty, with room for the gateway's fields; the list went with the fields.
        assert!(response.headers().is_empty());
        assert!(response.headers().capacity() >= ROOM_TO_ADD);
        assert!(fields.is_empty());
        assert_eq!(raw_fields.len(), 5);
        let seen: Vec<(&str, &[u8])> = raw_fields
            .iter()
            .map(|(name, value)| (name.as_str(), value))
            .collect();
        assert_eq!(seen, [("x-a", &b"1"[..]), ("server", b"s"), ("x-a", b"2")]);
        // The proxy's own field replaces the upstream's of that name.
        let mut raw_fields = raw_fields;
        raw_fields.set_own(
            HeaderName::from_static("server"),
            HeaderValue::from_static("mine"),
        );
        let names: Vec<&str> = raw_fields.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["x-a", "x-a"]);
        assert_eq!(
            raw_fields
                .own()
                .map(|(name, value)| (name.as_str(), value.as_bytes())),
            Some(("server", &b"mine"[..]))
        );
        // In a map: the upstream's, then what the proxy set (which replaces the upstream's).
        let mut over = HeaderMap::new();
        over.insert("x-a", HeaderValue::from_static("mine"));
        over.insert("x-b", HeaderValue::from_static("b"));
        let map = raw_fields.into_map(over);
        let all: Vec<(&str, &[u8])> = map
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        assert_eq!(
            all,
            [("x-a", &b"mine"[..]), ("x-b", b"b"), ("server", b"mine")]
        );
    }

    #[test]
    fn a_recycled_box_serves_the_next_answer_with_its_list() {
        let raw = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n";
        spare_boxes(true);
        let mut fields = Fields::new();
        let head = whole(raw, &mut fields);
        let Ok((answer, first)) = head.raw(Bytes::copy_from_slice(raw), &mut fields) else {
            panic!("a plain answer's fields stay as read");
        };
        // The answer's map goes back with the box (what the proxy set in it emptied).
        let (mut parts, ()) = answer.into_parts();
        parts
            .headers
            .insert("x-request-id", HeaderValue::from_static("id"));
        let room = parts.headers.capacity();
        first.recycle_with(parts.headers);
        assert_eq!(spare_boxes(false), 1);
        // The next answer takes that box: the connection gets its emptied list, the answer the
        // emptied map, room kept.
        let head = whole(raw, &mut fields);
        let Ok((answer, second)) = head.raw(Bytes::copy_from_slice(raw), &mut fields) else {
            panic!("a plain answer's fields stay as read");
        };
        assert!(answer.headers().is_empty());
        assert_eq!(answer.headers().capacity(), room);
        assert!(fields.is_empty() && fields.capacity() >= 3);
        assert_eq!(second.len(), 3);
        assert_eq!(spare_boxes(false), 0);
    }

    #[test]
    fn fields_named_by_connection_or_of_an_interim_answer_need_a_map() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: s\r\n\r\n"[..],
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        ] {
            let mut fields = Fields::new();
            let head = whole(raw, &mut fields);
            let bytes = Bytes::copy_from_slice(raw);
            assert!(head.raw(bytes, &mut fields).is_err());
            assert!(!fields.is_empty(), "the fields stay for the map");
        }
        // `close` and `keep-alive` name no field.
        let raw = b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, close,\r\nContent-Length: 0\r\n\r\n";
        let mut fields = Fields::new();
        let head = whole(raw, &mut fields);
        assert!(head.raw(Bytes::copy_from_slice(raw), &mut fields).is_ok());
    }
}
