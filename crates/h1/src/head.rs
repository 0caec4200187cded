//! A request head read by sekisho's owned HTTP/1.1 path: parsed with `httparse` (the parser hyper
//! itself uses) and made into an `http::Request` whose header values are slices of the bytes
//! read, not copies — or left to hyper.
//!
//! The owned path takes only the common case and gives everything else to hyper unread, so
//! that every refusal, limit and smuggling defence stays hyper's and the gateway's as before:
//! HTTP/1.1 only; at most one `Content-Length` of digits, or one `Transfer-Encoding: chunked`
//! (never both; its body read by [`crate::ChunkedDecoder`]); no
//! `Expect` but `100-continue` (met by the gateway, so the field is left out of the request), no
//! upgrade, no `CONNECT`; an origin-form target of RFC 3986's characters; exactly
//! one `Host`; at most `max_header_count` fields (and 100). A head it takes, hyper would take
//! too and read the same way (`tests/differential.rs` and the fuzz target `h1_head` feed both
//! the same heads).

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};

use crate::names::eq_lower;

/// Header fields of a head the owned path parses at most (hyper's own default count).
pub const MAX_FIELDS: usize = 100;

/// Fields a request's map has room for beyond its own.
const ROOM_TO_ADD: usize = 8;

/// The bytes of an origin-form target the owned path takes (RFC 3986: unreserved, sub-delims,
/// `:@/?%`); anything else goes to hyper.
const TARGET_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let allowed = b"-._~!$&'()*+,;=:@/?%";
    let mut index = 0;
    while index < allowed.len() {
        table[allowed[index] as usize] = true;
        index += 1;
    }
    let mut byte = 0;
    while byte < 256 {
        if (byte as u8).is_ascii_alphanumeric() {
            table[byte] = true;
        }
        byte += 1;
    }
    table
};

/// What the start of a connection's buffer holds.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// Not the common case: hyper reads it.
    HandOff,
    /// A head the owned path serves.
    Head(Head),
}

/// A head's fields as names and the positions of their values in the buffer read: filled by
/// [`parse`], emptied by [`Head::request`] (one per connection, reused).
pub type Fields = Vec<(HeaderName, Range<usize>)>;

/// A parsed head, as positions in the buffer it was read from (its fields in a [`Fields`]).
#[derive(Debug)]
pub struct Head {
    /// Bytes of the head, final empty line included.
    pub len: usize,
    method: Method,
    target: Range<usize>,
    /// The body's length (`Content-Length`; 0: none, or chunked). Its bytes follow the head.
    pub body_length: u64,
    /// The body is chunked (`Transfer-Encoding: chunked`): its length is in its chunks.
    pub chunked: bool,
    /// The client waits for `100 Continue` before it sends the body (`Expect: 100-continue`,
    /// which the request made by [`Head::request`] no longer carries: the expectation is this
    /// hop's to meet).
    pub expect_continue: bool,
    /// The client keeps the connection open after this exchange (no `Connection: close`).
    pub keep_alive: bool,
    /// `HEAD`: the answer has no body whatever its fields say.
    pub is_head: bool,
}

/// A `Content-Length` value: digits only (RFC 9110: no sign, no list), at most 19 of them.
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    value.iter().try_fold(0u64, |length, &byte| {
        byte.is_ascii_digit()
            .then(|| length * 10 + u64::from(byte - b'0'))
    })
}

/// The value of the first field named `name` among a head's `fields` (as [`parse`] left them),
/// read from `buf`, the bytes the head was parsed from.
pub fn field<'a>(buf: &'a [u8], fields: &Fields, name: &HeaderName) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(field_name, _)| field_name == name)
        .and_then(|(_, value)| buf.get(value.clone()))
}

/// Offset of `part` (a slice of `buf`) in `buf`.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Parses the head at the start of `buf`, taking at most `max_fields` fields; its fields go to
/// `fields` (emptied first).
pub fn parse(buf: &[u8], max_fields: usize, fields: &mut Fields) -> Parsed {
    // Not initialised: httparse writes the fields it finds.
    let mut array = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let slots = &mut array[..max_fields.clamp(1, MAX_FIELDS)];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::HandOff,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::HandOff;
    };
    if !target.starts_with('/') || !target.bytes().all(|b| TARGET_BYTES[usize::from(b)]) {
        return Parsed::HandOff;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    if method == Method::CONNECT {
        return Parsed::HandOff;
    }
    let mut hosts = 0;
    let mut body_length = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut keep_alive = true;
    fields.clear();
    for field in request.headers.iter() {
        let name = field.name.as_bytes();
        match name.len() {
            4 if eq_lower(name, b"host") => hosts += 1,
            // `100-continue`, once, is met by the owned path; any other expectation is hyper's.
            6 if eq_lower(name, b"expect") => {
                if expect_continue || !eq_lower(field.value, b"100-continue") {
                    return Parsed::HandOff;
                }
                expect_continue = true;
                continue;
            }
            7 if eq_lower(name, b"upgrade") => return Parsed::HandOff,
            10 if eq_lower(name, b"connection") => {
                for option in field.value.split(|&b| b == b',') {
                    let option = option.trim_ascii();
                    if eq_lower(option, b"close") {
                        keep_alive = false;
                    } else if eq_lower(option, b"upgrade") {
                        return Parsed::HandOff;
                    }
                }
            }
            14 if eq_lower(name, b"content-length") => {
                // One length of digits only; hyper folds repeated equal lengths into one field
                // and reads lists: such heads are its own.
                match content_length(field.value) {
                    Some(length) if body_length.is_none() => body_length = Some(length),
                    _ => return Parsed::HandOff,
                }
            }
            // Exactly `chunked`, once: codings, lists and repeats are hyper's.
            17 if eq_lower(name, b"transfer-encoding") => {
                if chunked || !eq_lower(field.value, b"chunked") {
                    return Parsed::HandOff;
                }
                chunked = true;
            }
            _ => {}
        }
        let Ok(name) = crate::names::field_name(name) else {
            return Parsed::HandOff;
        };
        // httparse and `HeaderValue` take the same bytes in a value (visible ASCII, space, tab,
        // obs-text); checked when the request is made.
        fields.push((name, range_in(buf, field.value)));
    }
    if hosts != 1 || (chunked && body_length.is_some()) {
        return Parsed::HandOff;
    }
    Parsed::Head(Head {
        len,
        is_head: method == Method::HEAD,
        method,
        target: range_in(buf, target.as_bytes()),
        body_length: body_length.unwrap_or(0),
        chunked,
        expect_continue,
        keep_alive,
    })
}

impl Head {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The target's path (its query cut off), read from `buf`, the bytes the head was parsed
    /// from.
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a str {
        let target = buf.get(self.target.clone()).unwrap_or_default();
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        // An origin-form target of RFC 3986's characters only (checked by `parse`): ASCII.
        std::str::from_utf8(path).unwrap_or_default()
    }

    /// The `Host` field's value (a head has exactly one), read from `buf` with the head's
    /// `fields` (as [`parse`] left them). Looked up rather than kept: a head is held while its
    /// body is read, in every idle connection's future.
    pub fn host<'a>(&self, buf: &'a [u8], fields: &Fields) -> &'a [u8] {
        field(buf, fields, &http::header::HOST).unwrap_or_default()
    }

    /// The request, its target and values slices of `bytes` (the head's own bytes, split off the
    /// connection's buffer), its fields taken from `fields`; `None` when `http` refuses a part
    /// of it (the caller hands it off).
    pub fn request<B>(self, bytes: &Bytes, fields: &mut Fields, body: B) -> Option<Request<B>> {
        let target = PathAndQuery::from_maybe_shared(bytes.slice(self.target)).ok()?;
        // Room for the fields a proxy adds (forwarding, request id) without growing the map.
        let mut headers = crate::maps::map_with_room(fields.len() + ROOM_TO_ADD);
        for (name, value) in fields.drain(..) {
            let value = HeaderValue::from_maybe_shared(bytes.slice(value)).ok()?;
            headers.append(name, value);
        }
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = Uri::from(target);
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> (Head, Fields) {
        let mut fields = Fields::new();
        match parse(raw, MAX_FIELDS, &mut fields) {
            Parsed::Head(head) => (head, fields),
            other => panic!("{other:?} for {}", String::from_utf8_lossy(raw)),
        }
    }

    fn unused(raw: &[u8]) -> Head {
        match parse(raw, MAX_FIELDS, &mut Fields::new()) {
            Parsed::Head(head) => head,
            other => panic!("{other:?} for {}", String::from_utf8_lossy(raw)),
        }
    }

    fn handed_off(raw: &[u8]) -> bool {
        matches!(parse(raw, MAX_FIELDS, &mut Fields::new()), Parsed::HandOff)
    }

    #[test]
    fn a_plain_get_becomes_a_request_of_the_same_bytes() {
        let raw = b"GET /a/b?c=1 HTTP/1.1\r\nHost: example.test\r\nX-Custom: one\r\nx-custom: two\r\n\r\nGET";
        let (parsed, mut fields) = head(raw);
        assert_eq!(parsed.len, raw.len() - 3);
        assert!(parsed.keep_alive && !parsed.is_head);
        let bytes = Bytes::copy_from_slice(&raw[..parsed.len]);
        let request = parsed
            .request(&bytes, &mut fields, ())
            .unwrap_or_else(|| panic!("refused"));
        assert!(fields.is_empty(), "the fields are taken");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a/b?c=1");
        assert_eq!(request.headers()["host"], "example.test");
        let customs: Vec<_> = request.headers().get_all("x-custom").iter().collect();
        assert_eq!(customs, ["one", "two"]);
    }

    #[test]
    fn connection_close_and_head_are_noticed() {
        let parsed = unused(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!parsed.keep_alive && parsed.is_head);
        let zero = unused(b"DELETE /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert!(zero.keep_alive);
    }

    #[test]
    fn a_length_says_how_long_the_body_is() {
        let (post, _) = head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(post.body_length, 5);
        let (get, _) = head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(get.body_length, 0);
        assert!(!get.chunked);
        let (chunked, _) =
            head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert!(chunked.chunked);
        assert_eq!(chunked.body_length, 0);
        let raw = b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
        let (expecting, mut fields) = head(raw);
        assert!(expecting.expect_continue);
        let bytes = Bytes::copy_from_slice(raw);
        let request = expecting
            .request(&bytes, &mut fields, ())
            .unwrap_or_else(|| panic!("refused"));
        assert!(
            !request.headers().contains_key("expect"),
            "the expectation is met here"
        );
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(matches!(
            parse(
                b"GET / HTTP/1.1\r\nHost: x\r\n",
                MAX_FIELDS,
                &mut Fields::new()
            ),
            Parsed::Partial
        ));
    }

    #[test]
    fn everything_unusual_is_left_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a\"b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded: y\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(handed_off(raw), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn more_fields_than_allowed_go_to_hyper() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(matches!(parse(raw, 3, &mut Fields::new()), Parsed::Head(_)));
        assert!(matches!(parse(raw, 2, &mut Fields::new()), Parsed::HandOff));
    }
}
