//! Request and response heads: what is forwarded, what is refused, how the body is framed.
//!
//! A head is parsed with `httparse` in place and never copied into a header map: what goes on to
//! the other side is the original bytes (as ranges of the read buffer) minus the lines it must
//! not see, followed by the lines this hop adds (`Edits::added`), written in one vectored write.
//! Everything unusual is refused with a `Refusal`: in the real gateway that is where the request
//! would be handed to hyper instead (upgrades, CONNECT, absolute-form targets, transfer codings
//! other than chunked, framing that two parsers could read differently, obs-fold, bare LF).

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::fields::{classify, facts_of, listed_in_connection, Facts, Name};
use crate::ids::RequestIds;

/// Header lines parsed per head; more is refused (431 for a request).
pub const MAX_HEADERS: usize = 64;
/// Longest head accepted, request line and headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest client `X-Request-Id` kept (a longer one is replaced, as in sekisho).
const MAX_REQUEST_ID: usize = 128;

/// The bytes of an origin-form target the fast path takes (RFC 3986: unreserved, sub-delims,
/// `:@/?%`).
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

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, passed through as is.
    Chunked,
    /// Until the upstream closes (responses only).
    UntilClose,
}

/// A head that is not forwarded: the status the client gets, and why (for tests and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

/// What a request head says, once its edits are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head in the buffer, final empty line included.
    pub head_len: usize,
    pub framing: Framing,
    /// The client's connection stays open after this exchange (unless the response ends it).
    pub keep_alive: bool,
    pub http10: bool,
    /// `HEAD`: the response has no body whatever its headers say.
    pub is_head: bool,
    /// `Expect: 100-continue` (removed from the forwarded head: this hop answers it).
    pub expect_continue: bool,
}

/// What a response head says, once its edits are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// A 1xx answer before the final one: forwarded as is, then the next head is read.
    pub interim: bool,
    /// The upstream connection can carry another request once the body is read.
    pub upstream_keep_alive: bool,
    /// The client's connection stays open after this response.
    pub client_keep_alive: bool,
}

/// The forwarded head of the message being handled: kept ranges of the read buffer, then
/// `added`. Reused from one message to the next (no allocation once warm).
#[derive(Debug, Default)]
pub struct Edits {
    pub kept: Vec<Range<usize>>,
    pub added: Vec<u8>,
    /// The request id of the current exchange (the client's when sane, else made here).
    pub request_id: Vec<u8>,
    /// The forwarding lines of the connection's last request and its `Host` (`memo_valid`
    /// when they can be reused: a first hop).
    memo_lines: Vec<u8>,
    memo_host: Vec<u8>,
    memo_valid: bool,
}

/// Facts of one connection that its requests' edits need.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    /// The client's address as `X-Forwarded-For` shows it.
    pub ip_text: String,
    /// `for=…;proto=http`, the start of this hop's `Forwarded` element.
    pub forwarded_prefix: String,
}

impl ClientFacts {
    pub fn new(ip: std::net::IpAddr) -> Self {
        let forwarded_prefix = match ip {
            std::net::IpAddr::V4(v4) => format!("for={v4};proto=http"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
        };
        Self {
            ip_text: ip.to_string(),
            forwarded_prefix,
        }
    }
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// Offset of `part` (a slice of `buf`) in `buf`.
fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - buf.as_ptr() as usize
}

/// Fills `kept` with the ranges of `buf` to forward: the start line, then every header line
/// `keep` accepts, neighbours merged into one range. Every line must end in CRLF.
fn keep_lines(
    buf: &[u8],
    head_len: usize,
    headers: &[httparse::Header<'_>],
    kept: &mut Vec<Range<usize>>,
    status: u16,
    mut keep: impl FnMut(&httparse::Header<'_>) -> bool,
) -> Result<(), Refusal> {
    kept.clear();
    // The head ends with an empty line, which the added lines bring back.
    if !buf[..head_len].ends_with(b"\r\n\r\n") {
        return Err(refuse(status, "bare LF"));
    }
    let end = head_len - 2;
    let mut line_start = 0;
    let mut keep_current = true;
    for header in headers.iter().map(Some).chain(std::iter::once(None)) {
        let line_end = header.map_or(end, |h| offset_in(buf, h.name.as_bytes()));
        if line_end < 2 || &buf[line_end - 2..line_end] != b"\r\n" {
            return Err(refuse(status, "bare LF"));
        }
        if keep_current {
            match kept.last_mut() {
                Some(last) if last.end == line_start => last.end = line_end,
                _ => kept.push(line_start..line_end),
            }
        }
        line_start = line_end;
        keep_current = header.is_some_and(&mut keep);
    }
    Ok(())
}

/// Parses a request head at the start of `buf`: `Ok(None)` while it is incomplete. On success
/// `edits` holds the forwarded head.
pub fn read_request(
    buf: &[u8],
    client: &ClientFacts,
    ids: &mut RequestIds,
    edits: &mut Edits,
) -> Result<Option<RequestHead>, Refusal> {
    // Not initialised: httparse writes the headers it finds (saves filling 2 KiB per head).
    let mut header_array = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, &mut header_array) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(refuse(431, "too many headers")),
        Err(_) => return Err(refuse(400, "malformed head")),
    };
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        return Err(refuse(400, "malformed head"));
    };
    let headers = request.headers;
    let mut facts = Facts::new();
    facts_of(headers, &mut facts).map_err(|reason| refuse(400, reason))?;
    if method == "CONNECT" || facts.upgrade {
        return Err(refuse(400, "upgrade or CONNECT: hyper's"));
    }
    let origin_form = path.starts_with('/') || (path == "*" && method == "OPTIONS");
    if !origin_form {
        return Err(refuse(400, "absolute-form target: hyper's"));
    }
    // httparse lets through bytes `http::Uri` (and so hyper) refuses, `"` for one: the fast path
    // takes RFC 3986's characters only and leaves the rest to hyper (tests/differential.rs).
    if !path.bytes().all(|byte| TARGET_BYTES[usize::from(byte)]) {
        return Err(refuse(400, "unusual bytes in the target: hyper's"));
    }
    let http10 = version == 0;
    if facts.hosts > 1 || (!http10 && facts.hosts == 0) {
        return Err(refuse(400, "Host missing or repeated"));
    }
    let framing = match (facts.transfer_encoding, facts.content_length) {
        (Some(_), Some(_)) => return Err(refuse(400, "Content-Length and Transfer-Encoding")),
        (Some(coding), None) if !http10 && coding.eq_ignore_ascii_case(b"chunked") => {
            Framing::Chunked
        }
        (Some(_), None) => return Err(refuse(400, "transfer coding other than chunked")),
        (None, Some(0)) | (None, None) => Framing::Empty,
        (None, Some(length)) => Framing::Length(length),
    };
    let expect_continue = match facts.expect {
        None => false,
        Some(value) if value.eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => return Err(refuse(417, "unknown expectation")),
    };
    let keep_alive = if http10 {
        facts.keep_alive && !facts.close
    } else {
        !facts.close
    };

    // The client's request id is kept when sane (its line stays), otherwise one is made.
    let sane_id = facts.request_id.filter(|id| {
        !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(u8::is_ascii_graphic)
    });
    edits.request_id.clear();
    match sane_id {
        Some(id) => edits.request_id.extend_from_slice(id),
        None => ids.next_hex(&mut edits.request_id),
    }

    keep_lines(
        buf,
        head_len,
        headers,
        &mut edits.kept,
        400,
        |header| match classify(header.name.as_bytes()) {
            Name::Other | Name::Host | Name::ContentLength | Name::TransferEncoding => {
                facts.connection_name_count == 0
                    || !listed_in_connection(&facts, header.name.as_bytes())
            }
            Name::XRequestId => sane_id.is_some(),
            _ => false,
        },
    )?;

    // A first hop (no earlier X-Forwarded-For or Forwarded) asking for the same host as the
    // connection's previous request gets the same forwarding lines: one copy.
    // (`first_hop` also asks for exactly one Host, which the memo is keyed by.)
    let first_hop =
        facts.forwarded_for_count == 0 && facts.forwarded_count == 0 && facts.hosts == 1;
    if !(first_hop && edits.memo_valid && edits.memo_host == facts.host) {
        forwarding_lines(&facts, client, &mut edits.memo_lines);
        edits.memo_valid = first_hop;
        edits.memo_host.clear();
        edits.memo_host.extend_from_slice(facts.host);
    }
    let added = &mut edits.added;
    added.clear();
    added.extend_from_slice(&edits.memo_lines);
    if sane_id.is_none() {
        added.extend_from_slice(b"X-Request-Id: ");
        added.extend_from_slice(&edits.request_id);
        added.extend_from_slice(b"\r\n");
    }
    if http10 {
        // The upstream connection is pooled: ask an HTTP/1.0 upstream answer to keep it.
        added.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    added.extend_from_slice(b"\r\n");

    Ok(Some(RequestHead {
        head_len,
        framing,
        keep_alive,
        http10,
        is_head: method == "HEAD",
        expect_continue,
    }))
}

/// This hop's `X-Forwarded-*` and `Forwarded` lines, into `out`.
fn forwarding_lines(facts: &Facts<'_>, client: &ClientFacts, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"X-Forwarded-For: ");
    for prior in &facts.forwarded_for[..facts.forwarded_for_count] {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.ip_text.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\n");
    if facts.hosts == 1 {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(facts.host);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Forwarded: ");
    for prior in &facts.forwarded[..facts.forwarded_count] {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.forwarded_prefix.as_bytes());
    // RFC 7239: the host goes in quotes; one that cannot be quoted is left out.
    if facts.hosts == 1
        && facts
            .host
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(facts.host);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head at the start of `buf` for `request`: `Ok(None)` while incomplete.
/// On success `edits.kept`/`added` hold the forwarded head (`edits.request_id` is echoed).
pub fn read_response(
    buf: &[u8],
    request: &RequestHead,
    edits: &mut Edits,
) -> Result<Option<ResponseHead>, Refusal> {
    let mut header_array = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut header_array,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(refuse(502, "malformed response head")),
    };
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return Err(refuse(502, "malformed response head"));
    };
    // httparse takes any three digits; `http::StatusCode` (hyper) only 100–999.
    if status < 100 {
        return Err(refuse(502, "status below 100"));
    }
    if status == 101 {
        return Err(refuse(502, "101 to a request that asked no upgrade"));
    }
    if (100..200).contains(&status) {
        // Forwarded as it came (the proxy writes `buf[..head_len]` itself); `edits` says the same.
        edits.kept.clear();
        edits.kept.push(0..head_len - 2);
        edits.added.clear();
        edits.added.extend_from_slice(b"\r\n");
        return Ok(Some(ResponseHead {
            head_len,
            status,
            framing: Framing::Empty,
            interim: true,
            upstream_keep_alive: true,
            client_keep_alive: true,
        }));
    }
    let headers = response.headers;
    let mut facts = Facts::new();
    facts_of(headers, &mut facts).map_err(|reason| refuse(502, reason))?;
    let no_body = request.is_head || status == 204 || status == 304;
    let framing = match (facts.transfer_encoding, facts.content_length) {
        _ if no_body => Framing::Empty,
        (Some(_), Some(_)) => return Err(refuse(502, "Content-Length and Transfer-Encoding")),
        (Some(coding), None) if version == 1 && coding.eq_ignore_ascii_case(b"chunked") => {
            Framing::Chunked
        }
        (Some(_), None) => return Err(refuse(502, "transfer coding other than chunked")),
        (None, Some(0)) => Framing::Empty,
        (None, Some(length)) => Framing::Length(length),
        (None, None) => Framing::UntilClose,
    };
    if request.http10 && framing == Framing::Chunked {
        return Err(refuse(502, "chunked answer to HTTP/1.0: hyper's"));
    }
    let upstream_keep_alive = framing != Framing::UntilClose
        && if version == 0 {
            facts.keep_alive && !facts.close
        } else {
            !facts.close
        };
    let client_keep_alive = request.keep_alive && framing != Framing::UntilClose;

    keep_lines(
        buf,
        head_len,
        headers,
        &mut edits.kept,
        502,
        |header| match classify(header.name.as_bytes()) {
            Name::Other
            | Name::Host
            | Name::ContentLength
            | Name::TransferEncoding
            | Name::XForwardedFor
            | Name::XForwardedReplaced
            | Name::Forwarded
            | Name::Expect => {
                facts.connection_name_count == 0
                    || !listed_in_connection(&facts, header.name.as_bytes())
            }
            _ => false,
        },
    )?;

    let added = &mut edits.added;
    added.clear();
    added.extend_from_slice(b"X-Request-Id: ");
    added.extend_from_slice(&edits.request_id);
    added.extend_from_slice(b"\r\n");
    if !client_keep_alive {
        added.extend_from_slice(b"Connection: close\r\n");
    } else if request.http10 {
        added.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    added.extend_from_slice(b"\r\n");

    Ok(Some(ResponseHead {
        head_len,
        status,
        framing,
        interim: false,
        upstream_keep_alive,
        client_keep_alive,
    }))
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
