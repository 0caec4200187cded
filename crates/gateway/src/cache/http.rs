//! The HTTP caching rules sekisho follows (RFC 9111 for a shared cache, RFC 5861 for the stale
//! extensions), as pure functions of headers and statuses.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// The directives of one message's `Cache-Control` (every field line, comma-separated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Reads every `Cache-Control` line of `headers`; unknown directives are ignored and a
    /// malformed number makes its directive absent.
    pub(super) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = line.to_str() else { continue };
            for directive in text.split(',') {
                let (name, value) = match directive.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || value.and_then(|v| v.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "max-age" => cc.max_age = seconds(),
                    "s-maxage" => cc.s_maxage = seconds(),
                    "stale-while-revalidate" => cc.stale_while_revalidate = seconds(),
                    "stale-if-error" => cc.stale_if_error = seconds(),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Why a request is not answered from the cache (the `fwd` of `Cache-Status`), or `None` when
/// it may be.
pub(super) fn request_bypass(
    method: &Method,
    headers: &HeaderMap,
    cache_authorized: bool,
) -> Option<&'static str> {
    if method != Method::GET && method != Method::HEAD {
        return Some("method");
    }
    if is_authorized(headers) && !cache_authorized {
        return Some("bypass");
    }
    None
}

/// Whether the request carries credentials: an `Authorization` header, or an identity the
/// gateway's authentication set (`X-Auth-User-Id`, which a client cannot send: its copies are
/// removed first) — a session cookie is a credential too.
pub(super) fn is_authorized(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-auth-user-id")
}

/// Whether the client asked for a fresh answer (`no-cache`, `max-age=0`, or `Pragma:
/// no-cache`): the cache then goes to the upstream, and still stores what comes back.
pub(super) fn wants_revalidation(headers: &HeaderMap) -> bool {
    let cc = CacheControl::parse(headers);
    cc.no_cache
        || cc.max_age == Some(0)
        || headers
            .get(header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"))
}

/// Whether the client forbade storing (`no-store` in the request).
pub(super) fn forbids_store(headers: &HeaderMap) -> bool {
    CacheControl::parse(headers).no_store
}

/// Statuses a shared cache may store without explicit freshness (RFC 9110 §15.1's
/// "heuristically cacheable" list, less 206 and 501 which sekisho does not cache).
fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414
    )
}

/// Negative answers: kept for `negative_ttl` unless the upstream said otherwise.
pub(super) fn is_negative(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 410)
}

/// How long a response stays fresh in a shared cache, or `None` when it must not be stored.
///
/// `s-maxage` wins over `max-age`; without either, `ttl` (or `negative_ttl` for 404/410, where
/// zero means "do not cache negatives"). A request with `Authorization` is stored only when the
/// route allows it (`cache_authorized`) or the response says `public` or `s-maxage`.
pub(super) fn freshness(
    status: StatusCode,
    response: &HeaderMap,
    authorized: bool,
    ttl: Duration,
    negative_ttl: Duration,
) -> Option<Duration> {
    if !cacheable_status(status) {
        return None;
    }
    let cc = CacheControl::parse(response);
    if cc.no_store || cc.private || cc.no_cache {
        return None;
    }
    if response.contains_key(header::SET_COOKIE) {
        // One client's cookie must never be handed to another.
        return None;
    }
    if authorized && !(cc.public || cc.s_maxage.is_some()) {
        return None;
    }
    if let Some(seconds) = cc.s_maxage.or(cc.max_age) {
        return (seconds > 0).then(|| Duration::from_secs(seconds));
    }
    if is_negative(status) {
        return (!negative_ttl.is_zero()).then_some(negative_ttl);
    }
    if status != StatusCode::OK && status != StatusCode::NO_CONTENT {
        // Other heuristically cacheable statuses only with explicit freshness.
        return None;
    }
    Some(ttl)
}

/// The header names a response varies on; `None` for `Vary: *` or a malformed field (never
/// cacheable).
pub(super) fn vary(response: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for line in response.get_all(header::VARY) {
        let text = line.to_str().ok()?;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = HeaderName::try_from(name.to_ascii_lowercase()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// The part of a cache key that the request's values of `names` make.
pub(super) fn variant(names: &[HeaderName], request: &HeaderMap) -> String {
    let mut text = String::new();
    for name in names {
        text.push('|');
        text.push_str(name.as_str());
        text.push('=');
        let mut first = true;
        for value in request.get_all(name) {
            if !first {
                text.push(',');
            }
            first = false;
            text.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
    }
    text
}

/// Whether `If-None-Match` of the request matches `etag` (weak comparison, RFC 9110 §13.1.2).
pub(super) fn none_match(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let wanted = opaque(etag);
    list.split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || opaque(candidate) == wanted)
}

/// The tags of a response, from `Cache-Tag` (comma-separated) and `Surrogate-Key`
/// (space-separated).
pub(super) fn tags(response: &HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    for (name, separators) in [
        ("cache-tag", &[',', ' '][..]),
        ("surrogate-key", &[' '][..]),
    ] {
        for line in response.get_all(name) {
            let Ok(text) = line.to_str() else { continue };
            for tag in text
                .split(separators)
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                if !tags.iter().any(|t: &String| t == tag) {
                    tags.push(tag.to_owned());
                }
            }
        }
    }
    tags
}

/// The seconds of `Age` the upstream reported.
pub(super) fn age(response: &HeaderMap) -> u64 {
    response
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::try_from(*name).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    const TTL: Duration = Duration::from_secs(60);
    const NEG: Duration = Duration::from_secs(5);

    #[test]
    fn cache_control_directives_across_lines() {
        let cc = CacheControl::parse(&headers(&[
            ("cache-control", "public, max-age=30"),
            (
                "cache-control",
                "S-MAXAGE=\"90\", stale-while-revalidate=10, stale-if-error=300",
            ),
        ]));
        assert!(cc.public);
        assert_eq!(cc.max_age, Some(30));
        assert_eq!(cc.s_maxage, Some(90));
        assert_eq!(cc.stale_while_revalidate, Some(10));
        assert_eq!(cc.stale_if_error, Some(300));
        assert!(!cc.no_store);
    }

    #[test]
    fn freshness_follows_the_response() {
        let ok = StatusCode::OK;
        assert_eq!(freshness(ok, &headers(&[]), false, TTL, NEG), Some(TTL));
        let max_age = headers(&[("cache-control", "max-age=30")]);
        assert_eq!(
            freshness(ok, &max_age, false, TTL, NEG),
            Some(Duration::from_secs(30))
        );
        let both = headers(&[("cache-control", "max-age=30, s-maxage=90")]);
        assert_eq!(
            freshness(ok, &both, false, TTL, NEG),
            Some(Duration::from_secs(90))
        );
        for refusal in ["no-store", "private", "no-cache", "max-age=0"] {
            let h = headers(&[("cache-control", refusal)]);
            assert_eq!(freshness(ok, &h, false, TTL, NEG), None, "{refusal}");
        }
        let cookie = headers(&[("set-cookie", "session=1")]);
        assert_eq!(freshness(ok, &cookie, false, TTL, NEG), None);
        assert_eq!(
            freshness(
                StatusCode::INTERNAL_SERVER_ERROR,
                &headers(&[]),
                false,
                TTL,
                NEG
            ),
            None
        );
        assert_eq!(
            freshness(StatusCode::NOT_FOUND, &headers(&[]), false, TTL, NEG),
            Some(NEG)
        );
        assert_eq!(
            freshness(StatusCode::GONE, &headers(&[]), false, TTL, Duration::ZERO),
            None
        );
        assert_eq!(
            freshness(
                StatusCode::MOVED_PERMANENTLY,
                &headers(&[]),
                false,
                TTL,
                NEG
            ),
            None
        );
    }

    #[test]
    fn authorized_answers_only_when_public() {
        let ok = StatusCode::OK;
        assert_eq!(freshness(ok, &headers(&[]), true, TTL, NEG), None);
        let public = headers(&[("cache-control", "public")]);
        assert_eq!(freshness(ok, &public, true, TTL, NEG), Some(TTL));
        assert_eq!(
            request_bypass(
                &Method::GET,
                &headers(&[("authorization", "Bearer x")]),
                false
            ),
            Some("bypass")
        );
        assert_eq!(
            request_bypass(
                &Method::GET,
                &headers(&[("authorization", "Bearer x")]),
                true
            ),
            None
        );
        assert_eq!(
            request_bypass(&Method::POST, &headers(&[]), true),
            Some("method")
        );
    }

    #[test]
    fn vary_names_and_variants() {
        let response = headers(&[
            ("vary", "Accept-Encoding, accept-language"),
            ("vary", "accept-encoding"),
        ]);
        let names = vary(&response).expect("cacheable");
        assert_eq!(names, ["accept-encoding", "accept-language"]);
        assert!(vary(&headers(&[("vary", "*")])).is_none());
        let a = variant(&names, &headers(&[("accept-encoding", "gzip")]));
        let b = variant(&names, &headers(&[("accept-encoding", "br")]));
        assert_ne!(a, b);
        assert_eq!(a, variant(&names, &headers(&[("accept-encoding", "gzip")])));
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let etag = HeaderValue::from_static("\"v1\"");
        assert!(none_match(&HeaderValue::from_static("\"v1\""), &etag));
        assert!(none_match(&HeaderValue::from_static("W/\"v1\""), &etag));
        assert!(none_match(
            &HeaderValue::from_static("\"v0\", \"v1\""),
            &etag
        ));
        assert!(none_match(&HeaderValue::from_static("*"), &etag));
        assert!(!none_match(&HeaderValue::from_static("\"v2\""), &etag));
    }

    #[test]
    fn tags_from_both_headers() {
        let h = headers(&[
            ("cache-tag", "product-1, catalog"),
            ("surrogate-key", "catalog sale"),
        ]);
        assert_eq!(tags(&h), ["product-1", "catalog", "sale"]);
    }

    #[test]
    fn client_revalidation() {
        assert!(wants_revalidation(&headers(&[(
            "cache-control",
            "no-cache"
        )])));
        assert!(wants_revalidation(&headers(&[(
            "cache-control",
            "max-age=0"
        )])));
        assert!(wants_revalidation(&headers(&[("pragma", "no-cache")])));
        assert!(!wants_revalidation(&headers(&[])));
        assert!(forbids_store(&headers(&[("cache-control", "no-store")])));
    }
}
