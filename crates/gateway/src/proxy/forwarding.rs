//! The request as the target sees it, and the answer as the client sees it: the URI rewritten
//! for the route (`strip_prefix`), hop-by-hop headers out (and those named by `Connection`),
//! `X-Forwarded-For/-Proto/-Host` and `Forwarded` appended, `Host` kept, the request id and the
//! route's header rules applied; and the balancing key of a request.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Response, Uri};
use sekisho_config::HashKey;

use super::context::ClientInfo;
use crate::edge::GatewayError;
use crate::request_id::X_REQUEST_ID;
use crate::router::CompiledRoute;
use crate::sync::lock;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The fields [`upstream_request`] adds: the four forwarding ones, `Host` and the request id.
pub(super) const ADDED_HEADERS: usize = 6;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded: those `sekisho_h1::is_hop_by_hop`
/// knows.
fn hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
    ]
}

/// Rewrites `parts` into the request the route's upstream gets, and returns its origin-form
/// target (`strip_prefix` applied): hop-by-hop headers out, forwarding headers appended, the
/// client's `host` kept, the request id and the route's request header rules applied. With
/// `as_lines` ([`forwarding_as_lines`] said so), the forwarding fields and the request id are
/// not set in the map but returned as head lines, for the gateway's own client side to write.
pub(super) fn upstream_request(
    route: &CompiledRoute,
    parts: &mut http::request::Parts,
    client: &ClientInfo,
    host: Option<HeaderValue>,
    request_id: &HeaderValue,
    as_lines: bool,
) -> Result<(PathAndQuery, Option<Bytes>), GatewayError> {
    let path = route.upstream_path(parts.uri.path());
    let path_and_query = match parts.uri.path_and_query() {
        // Unchanged (no prefix stripped): the request's own, shared, not parsed again.
        Some(original) if path.len() == parts.uri.path().len() => original.clone(),
        _ => {
            let rewritten = match parts.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.to_owned(),
            };
            PathAndQuery::try_from(rewritten)
                .map_err(|e| GatewayError::BadRequest(format!("invalid request target: {e}")))?
        }
    };
    let headers = &mut parts.headers;
    // One pass over the names: hop-by-hop ones to remove, and whether `Host` is there.
    let (hop, mut has_host) = headers.keys().fold((false, false), |(hop, host), name| {
        (
            hop || sekisho_h1::is_hop_by_hop(name),
            host || name == header::HOST,
        )
    });
    if hop {
        remove_hop_by_hop_fields(headers);
        // `Connection` may have named it.
        has_host = headers.contains_key(header::HOST);
    }
    let lines = if as_lines {
        Some(forwarding_lines(client, host.as_ref()))
    } else {
        // Room for what is added below, in one growth of the map rather than one per field.
        headers.reserve(ADDED_HEADERS);
        add_forwarding_headers(headers, client, host.as_ref());
        None
    };
    if !has_host {
        if let Some(host) = host {
            headers.insert(header::HOST, host);
        }
    }
    if lines.is_none() {
        headers.insert(&X_REQUEST_ID, request_id.clone());
    }
    for name in &route.headers.request_remove {
        headers.remove(name);
    }
    for (name, value) in &route.headers.request_set {
        headers.insert(name, value.clone());
    }
    parts.extensions.clear();
    Ok((path_and_query, lines))
}

/// The upstream's answer head as the client gets it: hop-by-hop headers out, the route's
/// response header rules applied.
pub(super) fn downstream_head<B>(route: &CompiledRoute, response: &mut Response<B>) {
    let headers = response.headers_mut();
    remove_hop_by_hop(headers);
    for name in &route.headers.response_remove {
        headers.remove(name);
    }
    for (name, value) in &route.headers.response_set {
        headers.insert(name, value.clone());
    }
}

/// The request's balancing key, hashed: the client IP, or a header, cookie or query parameter.
pub(super) fn request_key(
    key: &HashKey,
    client: &ClientInfo,
    headers: &HeaderMap,
    uri: &Uri,
) -> Option<u64> {
    let bytes: &[u8] = match key {
        HashKey::ClientIp => client.ip_text.as_bytes(),
        HashKey::Header(name) => headers.get(name)?.as_bytes(),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then_some(value)
            })?
            .as_bytes(),
        HashKey::Query(name) => uri
            .query()?
            .split('&')
            .find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then_some(value)
            })?
            .as_bytes(),
    };
    Some(sekisho_policy::balance::hash_key(bytes))
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The host the client asked for: its `Host` field (shared, not copied) or the request
/// target's authority; only one that is text.
pub(super) fn host_of(headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    if let Some(host) = headers.get(header::HOST).filter(|h| h.to_str().is_ok()) {
        return Some(host.clone());
    }
    HeaderValue::from_str(uri.authority()?.as_str()).ok()
}

/// `host` as text (a [`host_of`] value always is). [`host_of`] checked it is visible ASCII:
/// the UTF-8 check here (a word at a time for ASCII) gives the same text without checking each
/// byte again, as `to_str` would on every call.
pub(super) fn host_text(host: &HeaderValue) -> &str {
    std::str::from_utf8(host.as_bytes()).unwrap_or_default()
}

pub(super) fn strip_port(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split_once(']').map_or(host, |(h, _)| h);
    }
    // By bytes: `:` is ASCII, so where it is found the text can be cut.
    match host.bytes().rposition(|b| b == b':') {
        Some(colon) if host.as_bytes()[colon + 1..].iter().all(u8::is_ascii_digit) => {
            &host[..colon]
        }
        _ => host,
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present is cheaper than hashing eight absent ones.
    if headers.keys().any(sekisho_h1::is_hop_by_hop) {
        remove_hop_by_hop_fields(headers);
    }
}

/// Removes the hop-by-hop fields and those `Connection` names (some are there).
fn remove_hop_by_hop_fields(headers: &mut HeaderMap) {
    let hop = hop_by_hop();
    if let Some(connection) = headers.get(header::CONNECTION).cloned() {
        if let Ok(listed) = connection.to_str() {
            for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in hop {
        headers.remove(name);
    }
}

fn add_forwarding_headers(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    host_value: Option<&HeaderValue>,
) {
    // Per request only what changes: the values of this connection were made once, and no
    // `format!` runs on the common path (a first hop: no earlier X-Forwarded-For/Forwarded).
    let proto = if client.tls { "https" } else { "http" };
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => {
            let mut joined = String::with_capacity(existing.len() + client.ip_text.len() + 16);
            for prior in headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
            {
                joined.push_str(prior);
                joined.push_str(", ");
            }
            joined.push_str(&client.ip_text);
            HeaderValue::try_from(joined).ok()
        }
        _ => Some(client.ip_value.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host_value {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
    let existing = headers
        .get(&FORWARDED)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    if let Some(value) = forwarded_value(existing, client, host_value) {
        headers.insert(&FORWARDED, value);
    }
}

/// The `Forwarded` value (RFC 7239) for this hop, after the `existing` one: for a first hop
/// asking for the same host as the connection's previous request, the value made then.
fn forwarded_value(
    existing: Option<&str>,
    client: &ClientInfo,
    host_value: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let (None, Some(host)) = (existing, host_value) else {
        return render_forwarded(existing, client, host_value);
    };
    let mut guard = lock(&client.memo);
    let memo = guard.for_host(Some(host));
    if let Some(value) = &memo.forwarded {
        return Some(value.clone());
    }
    let value = render_forwarded(None, client, host_value)?;
    memo.forwarded = Some(value.clone());
    Some(value)
}

/// The `Forwarded` value for this hop, made.
fn render_forwarded(
    existing: Option<&str>,
    client: &ClientInfo,
    host_value: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let host = host_value.map(host_text);
    let mut combined = String::with_capacity(
        existing.map_or(0, |e| e.len() + 2)
            + client.forwarded_prefix.len()
            + host.map_or(0, |h| h.len() + 8),
    );
    if let Some(existing) = existing {
        combined.push_str(existing);
        combined.push_str(", ");
    }
    combined.push_str(&client.forwarded_prefix);
    // RFC 7239: a host (with its port) goes in quotes; one that cannot be quoted is left out.
    if let Some(host) = host {
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            combined.push_str(";host=\"");
            combined.push_str(host);
            combined.push('"');
        }
    }
    HeaderValue::try_from(combined).ok()
}

/// The names whose fields the gateway sets on every upstream request (the forwarding ones and
/// the request id).
fn is_set_by_gateway(name: &HeaderName) -> bool {
    // By length first: one comparison rules out nearly every name.
    match name.as_str().len() {
        9 => name == FORWARDED,
        12 => name == X_REQUEST_ID,
        15 => name == X_FORWARDED_FOR,
        16 => name == X_FORWARDED_HOST,
        17 => name == X_FORWARDED_PROTO,
        _ => false,
    }
}

/// Whether the forwarding fields and the request id can be written as head lines rather than
/// set in the request's map: the client sent none of them (nothing to append to or replace)
/// and the route's header rules name none.
pub(super) fn forwarding_as_lines(route: &CompiledRoute, headers: &HeaderMap) -> bool {
    !headers.keys().any(is_set_by_gateway) && !route.headers.request_names(is_set_by_gateway)
}

/// The forwarding fields of a first hop, as head lines (`name: value\r\n`), the same values
/// [`upstream_request`] sets in the map otherwise (the request id is written beside them:
/// `OwnedHead::request_id`). Rendered once per connection and host: the requests that follow on
/// the connection share them.
fn forwarding_lines(client: &ClientInfo, host_value: Option<&HeaderValue>) -> Bytes {
    let mut guard = lock(&client.memo);
    let memo = guard.for_host(host_value);
    if let Some(lines) = &memo.lines {
        return lines.clone();
    }
    let mut lines =
        Vec::with_capacity(128 + client.ip_text.len() * 2 + host_value.map_or(0, |h| h.len() * 2));
    let mut line = |name: &HeaderName, value: &[u8]| {
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(value);
        lines.extend_from_slice(b"\r\n");
    };
    line(&X_FORWARDED_FOR, client.ip_value.as_bytes());
    line(
        &X_FORWARDED_PROTO,
        if client.tls { b"https" } else { b"http" },
    );
    if let Some(host) = host_value {
        line(&X_FORWARDED_HOST, host.as_bytes());
    }
    if let Some(forwarded) = render_forwarded(None, client, host_value) {
        line(&FORWARDED, forwarded.as_bytes());
    }
    let lines = Bytes::from(lines);
    memo.lines = Some(lines.clone());
    lines
}

/// Sets in `headers` the fields of head `lines` (as [`forwarding_lines`] writes them), for a
/// request that goes up through a client that writes the map.
pub(super) fn insert_lines(headers: &mut HeaderMap, lines: &[u8]) {
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii_start());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("[::1"), "[::1");
        assert_eq!(strip_port("example.com:"), "example.com");
        assert_eq!(strip_port("example.com:x1"), "example.com:x1");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        // The list removed and the names told hop-by-hop are the same eight.
        assert!(hop_by_hop().into_iter().all(sekisho_h1::is_hop_by_hop));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_lines_carry_what_the_map_would() {
        let client = ClientInfo::new("192.0.2.4:4000".parse().expect("addr"), false);
        let host = HeaderValue::from_static("shop.example:8080");
        let id = HeaderValue::from_static("req-1");
        let mut by_map = HeaderMap::new();
        add_forwarding_headers(&mut by_map, &client, Some(&host));
        by_map.insert(&X_REQUEST_ID, id.clone());
        // Twice: the second time the connection's memo gives the Forwarded value.
        for _ in 0..2 {
            let lines = forwarding_lines(&client, Some(&host));
            let mut by_lines = HeaderMap::new();
            insert_lines(&mut by_lines, &lines);
            by_lines.insert(&X_REQUEST_ID, id.clone());
            assert_eq!(by_lines, by_map, "{}", String::from_utf8_lossy(&lines));
        }
        // Another host on the same connection: its own lines, not the memo's.
        let other = HeaderValue::from_static("other.example");
        let lines = forwarding_lines(&client, Some(&other));
        assert!(
            String::from_utf8_lossy(&lines).contains("x-forwarded-host: other.example\r\n"),
            "{}",
            String::from_utf8_lossy(&lines)
        );
        assert_eq!(
            by_map[&FORWARDED],
            "for=192.0.2.4;proto=http;host=\"shop.example:8080\""
        );
    }

    /// The connection's memos keep copies of the host, not slices of a request's head (which
    /// would keep its bytes, and the read buffer they share, for the connection's lifetime).
    #[test]
    fn the_memos_do_not_hold_the_heads_bytes() {
        let client = ClientInfo::new("192.0.2.4:4000".parse().expect("addr"), false);
        let head = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n");
        let host = HeaderValue::from_maybe_shared(head.slice(22..34)).expect("host");
        assert_eq!(host, "shop.example");
        let head_range = head.as_ptr() as usize..head.as_ptr() as usize + head.len();
        let _ = forwarding_lines(&client, Some(&host));
        let _ = forwarded_value(None, &client, Some(&host));
        let kept = lock(&client.memo).host.clone().expect("memo");
        assert_eq!(kept, host);
        assert!(!head_range.contains(&(kept.as_bytes().as_ptr() as usize)));
        assert!(lock(&client.memo).lines.is_some() && lock(&client.memo).forwarded.is_some());
    }

    #[test]
    fn fields_the_gateway_sets_keep_the_map() {
        for name in [
            "x-forwarded-for",
            "Forwarded",
            "x-request-id",
            "X-Forwarded-Host",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("name");
            assert!(is_set_by_gateway(&name), "{name}");
        }
        for name in [
            "x-forwarded-port",
            "x-requested-with",
            "host",
            "forwarded-for",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("name");
            assert!(!is_set_by_gateway(&name), "{name}");
        }
    }

    #[test]
    fn forwarding_headers_append_to_what_came_before() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.insert(&FORWARDED, HeaderValue::from_static("for=203.0.113.9"));
        let client = ClientInfo::new("[2001:db8::1]:4000".parse().expect("addr"), true);
        add_forwarding_headers(
            &mut headers,
            &client,
            Some(&HeaderValue::from_static("api.example.com:8443")),
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.9, 2001:db8::1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "api.example.com:8443");
        assert_eq!(
            headers[&FORWARDED],
            "for=203.0.113.9, for=\"[2001:db8::1]\";proto=https;host=\"api.example.com:8443\""
        );
    }
}
