//! What a head's header fields say, from one pass over them: the names this proxy looks at,
//! the framing headers, `Connection` and its options, the forwarding lists, the request id.
//! Imports nothing of the crate (`head` uses it).

/// `Connection` options, `X-Forwarded-For` and `Forwarded` lines remembered per head.
const MAX_LISTED: usize = 8;

/// The headers this module looks at; everything else is `Other` and forwarded untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Keep-Alive, Proxy-Connection, TE, Trailer: dropped.
    HopByHop,
    Upgrade,
    Expect,
    XForwardedFor,
    /// X-Forwarded-Proto and X-Forwarded-Host: replaced by this hop's.
    XForwardedReplaced,
    Forwarded,
    XRequestId,
    Other,
}

pub(crate) fn classify(name: &[u8]) -> Name {
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    // The length first: most names are `Other` after one comparison of lengths.
    match name.len() {
        2 if is("te") => Name::HopByHop,
        4 if is("host") => Name::Host,
        6 if is("expect") => Name::Expect,
        7 if is("upgrade") => Name::Upgrade,
        7 if is("trailer") => Name::HopByHop,
        9 if is("forwarded") => Name::Forwarded,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::HopByHop,
        12 if is("x-request-id") => Name::XRequestId,
        14 if is("content-length") => Name::ContentLength,
        15 if is("x-forwarded-for") => Name::XForwardedFor,
        16 if is("proxy-connection") => Name::HopByHop,
        16 if is("x-forwarded-host") => Name::XForwardedReplaced,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if is("x-forwarded-proto") => Name::XForwardedReplaced,
        _ => Name::Other,
    }
}

/// What the headers of one head say, from one pass over them.
pub(crate) struct Facts<'b> {
    pub(crate) content_length: Option<u64>,
    pub(crate) transfer_encoding: Option<&'b [u8]>,
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) upgrade: bool,
    /// Options of `Connection` other than close/keep-alive: header names to drop.
    pub(crate) connection_names: [&'b [u8]; MAX_LISTED],
    pub(crate) connection_name_count: usize,
    pub(crate) hosts: usize,
    pub(crate) host: &'b [u8],
    pub(crate) expect: Option<&'b [u8]>,
    pub(crate) forwarded_for: [&'b [u8]; MAX_LISTED],
    pub(crate) forwarded_for_count: usize,
    pub(crate) forwarded: [&'b [u8]; MAX_LISTED],
    pub(crate) forwarded_count: usize,
    pub(crate) request_id: Option<&'b [u8]>,
}

impl Facts<'_> {
    pub(crate) fn new() -> Self {
        Facts {
            content_length: None,
            transfer_encoding: None,
            close: false,
            keep_alive: false,
            upgrade: false,
            connection_names: [&[]; MAX_LISTED],
            connection_name_count: 0,
            hosts: 0,
            host: &[],
            expect: None,
            forwarded_for: [&[]; MAX_LISTED],
            forwarded_for_count: 0,
            forwarded: [&[]; MAX_LISTED],
            forwarded_count: 0,
            request_id: None,
        }
    }
}

/// Fills `facts` (in place: it is a few hundred bytes) from one pass over the headers.
pub(crate) fn facts_of<'b>(
    headers: &[httparse::Header<'b>],
    facts: &mut Facts<'b>,
) -> Result<(), &'static str> {
    for header in headers {
        match classify(header.name.as_bytes()) {
            Name::ContentLength => {
                let length = parse_content_length(header.value).ok_or("bad Content-Length")?;
                if facts.content_length.is_some_and(|seen| seen != length) {
                    return Err("differing Content-Length");
                }
                facts.content_length = Some(length);
            }
            Name::TransferEncoding => {
                if facts.transfer_encoding.is_some() {
                    return Err("repeated Transfer-Encoding");
                }
                facts.transfer_encoding = Some(header.value);
            }
            Name::Connection => {
                for option in header.value.split(|&b| b == b',') {
                    let option = trim(option);
                    if option.is_empty() {
                        continue;
                    }
                    if option.eq_ignore_ascii_case(b"close") {
                        facts.close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        facts.keep_alive = true;
                    } else if option.eq_ignore_ascii_case(b"upgrade") {
                        facts.upgrade = true;
                    } else if facts.connection_name_count < MAX_LISTED {
                        facts.connection_names[facts.connection_name_count] = option;
                        facts.connection_name_count += 1;
                    } else {
                        return Err("too many Connection options");
                    }
                }
            }
            Name::Upgrade => facts.upgrade = true,
            Name::Host => {
                facts.hosts += 1;
                facts.host = header.value;
            }
            Name::Expect => facts.expect = Some(header.value),
            Name::XForwardedFor => {
                push_listed(
                    &mut facts.forwarded_for,
                    &mut facts.forwarded_for_count,
                    header.value,
                )
                .ok_or("too many X-Forwarded-For lines")?;
            }
            Name::Forwarded => {
                push_listed(
                    &mut facts.forwarded,
                    &mut facts.forwarded_count,
                    header.value,
                )
                .ok_or("too many Forwarded lines")?;
            }
            Name::XRequestId => facts.request_id = Some(header.value),
            Name::HopByHop | Name::XForwardedReplaced | Name::Other => {}
        }
    }
    Ok(())
}

fn push_listed<'b>(
    list: &mut [&'b [u8]; MAX_LISTED],
    count: &mut usize,
    value: &'b [u8],
) -> Option<()> {
    let slot = list.get_mut(*count)?;
    *slot = value;
    *count += 1;
    Some(())
}

/// Digits only, as RFC 9110 says (no sign, no list: `5, 5` goes to hyper), at most 19 of them.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    value.iter().try_fold(0u64, |length, &byte| {
        byte.is_ascii_digit()
            .then(|| length * 10 + u64::from(byte - b'0'))
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else { return &[] };
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// Whether `name` is one of the `Connection` options (headers the sender wants dropped here).
pub(crate) fn listed_in_connection(facts: &Facts<'_>, name: &[u8]) -> bool {
    facts.connection_names[..facts.connection_name_count]
        .iter()
        .any(|listed| listed.eq_ignore_ascii_case(name))
}
