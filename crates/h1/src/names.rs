//! Field names read from a head: the common ones are recognised by their length and one
//! case-insensitive comparison, without `http`'s general parse (which copies the name through a
//! lowercasing table into a buffer, then matches it against every standard name). The result is
//! the same `HeaderName` either way.

use http::header::{self, HeaderName, InvalidHeaderName};

/// The `HeaderName` of the field name `name`, as [`HeaderName::from_bytes`] gives it.
pub(crate) fn field_name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
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

#[cfg(test)]
mod tests {
    use super::*;

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
