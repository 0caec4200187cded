//! Field names read from a head: the common ones are recognised by their length and one
//! case-insensitive comparison, without `http`'s general parse (which copies the name through a
//! lowercasing table into a buffer, then matches it against every standard name). The result is
//! the same `HeaderName` either way.

use http::header::{self, HeaderName, InvalidHeaderName};

/// Whether `text` — a field name or value as `httparse` took it — is `lower` (lower-case
/// letters, digits and `-`) in any case. Eight bytes at a time, each with its `0x20` bit set:
/// that turns an upper-case letter into its lower-case one, and makes no other byte `httparse`
/// lets through equal to a letter, a digit or `-` (their twins are control characters).
#[inline]
pub(crate) fn eq_lower(text: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    if text.len() != lower.len() {
        return false;
    }
    let (mut text, mut lower) = (text, lower);
    while let (Some((a, text_rest)), Some((b, lower_rest))) = (
        text.split_first_chunk::<8>(),
        lower.split_first_chunk::<8>(),
    ) {
        if u64::from_ne_bytes(*a) | CASE != u64::from_ne_bytes(*b) {
            return false;
        }
        (text, lower) = (text_rest, lower_rest);
    }
    text.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b)
}

/// The `HeaderName` of the field name `name`, as [`HeaderName::from_bytes`] gives it.
pub(crate) fn field_name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let is = |known: &[u8]| eq_lower(name, known);
    let found = match name.len() {
        4 if is(b"host") => header::HOST,
        4 if is(b"date") => header::DATE,
        4 if is(b"etag") => header::ETAG,
        4 if is(b"vary") => header::VARY,
        6 if is(b"server") => header::SERVER,
        6 if is(b"accept") => header::ACCEPT,
        10 if is(b"connection") => header::CONNECTION,
        10 if is(b"user-agent") => header::USER_AGENT,
        12 if is(b"content-type") => header::CONTENT_TYPE,
        13 if is(b"cache-control") => header::CACHE_CONTROL,
        13 if is(b"last-modified") => header::LAST_MODIFIED,
        14 if is(b"content-length") => header::CONTENT_LENGTH,
        17 if is(b"transfer-encoding") => header::TRANSFER_ENCODING,
        _ => return HeaderName::from_bytes(name),
    };
    Ok(found)
}

/// Whether `name` is one of the hop-by-hop fields a proxy does not forward (RFC 9110 §7.6.1,
/// and the `Keep-Alive`, `Proxy-Connection` and `Proxy-Authenticate` of older practice). Its
/// length first: most names have none of the eight lengths.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.len() {
        2 => name == "te",
        7 => name == "trailer" || name == "upgrade",
        10 => name == "connection" || name == "keep-alive",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        18 => name == "proxy-authenticate",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `eq_lower` is `eq_ignore_ascii_case` for every byte `httparse` takes in a name or value
    /// (visible ASCII, space, tab, obs-text), in every position of every word it compares.
    #[test]
    fn eq_lower_is_eq_ignore_ascii_case_on_what_httparse_takes() {
        let taken = (0x20u8..0x7f).chain([b'\t']).chain(0x80..=0xff);
        let known: [&[u8]; 6] = [
            b"content-length",
            b"transfer-encoding",
            b"100-continue",
            b"te",
            b"keep-alive",
            b"x-9",
        ];
        for lower in known {
            assert!(eq_lower(lower, lower));
            assert!(eq_lower(&lower.to_ascii_uppercase(), lower));
            assert!(!eq_lower(&lower[1..], lower));
            for at in 0..lower.len() {
                for byte in taken.clone() {
                    let mut text = lower.to_vec();
                    text[at] = byte;
                    assert_eq!(
                        eq_lower(&text, lower),
                        text.eq_ignore_ascii_case(lower),
                        "{:?} at {at} of {:?}",
                        byte as char,
                        String::from_utf8_lossy(lower)
                    );
                }
            }
        }
    }

    #[test]
    fn the_hop_by_hop_names_and_no_other() {
        let hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
        ];
        for name in hop {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "tk",
            "trailers",
            "upgrades",
            "content-length",
            "x-connection",
            "proxy-authorization",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    /// Every name this knows, in any case, and names near them, give what `http` gives.
    #[test]
    fn the_same_names_as_http_gives() {
        let names = [
            "host",
            "Host",
            "HOST",
            "date",
            "Date",
            "etag",
            "ETag",
            "vary",
            "server",
            "Server",
            "accept",
            "connection",
            "Connection",
            "user-agent",
            "User-Agent",
            "content-type",
            "Content-Type",
            "cache-control",
            "Last-Modified",
            "content-length",
            "Content-Length",
            "transfer-encoding",
            "Transfer-Encoding",
            "hosts",
            "hos",
            "x-host",
            "datE ",
            "vary:",
            "x-request-id",
            "content-lengtH",
            "content_length",
            "",
            "a b",
            "é",
        ];
        for name in names {
            let ours = field_name(name.as_bytes());
            let http = HeaderName::from_bytes(name.as_bytes());
            match (&ours, &http) {
                (Ok(ours), Ok(http)) => assert_eq!(ours, http, "{name:?}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{name:?}: ours {ours:?}, http {http:?}"),
            }
        }
    }
}
