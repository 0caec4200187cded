//! The HTTP caching rules sekisho follows (RFC 9111 for a shared cache, RFC 5861 for the stale
//! extensions), as pure functions of headers and statuses.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

mod cache_control;

pub(super) use cache_control::CacheControl;

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
/// no-cache` without `Cache-Control`): the cache then goes to the upstream, and still stores
/// what comes back. `cc` is the request's `Cache-Control`.
pub(super) fn wants_revalidation(cc: &CacheControl, headers: &HeaderMap) -> bool {
    // Pragma counts only without Cache-Control (RFC 9111 §5.4).
    cc.no_cache
        || cc.max_age == Some(0)
        || (!headers.contains_key(header::CACHE_CONTROL)
            && headers
                .get(header::PRAGMA)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache")))
}

/// Whether the client's own limits (RFC 9111 §5.2.1.1 `max-age`, §5.2.1.3 `min-fresh`) accept a
/// stored response of `age_ms` with `ttl_ms` of freshness left.
pub(super) fn acceptable_to_client(cc: &CacheControl, age_ms: u64, ttl_ms: i64) -> bool {
    cc.max_age
        .is_none_or(|seconds| age_ms <= seconds.saturating_mul(1000))
        && cc.min_fresh.is_none_or(|seconds| {
            ttl_ms >= i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
        })
}

/// Statuses a shared cache may store without explicit freshness (RFC 9110 §15.1's
/// "heuristically cacheable" list, less 206: a partial answer is passed through, never stored).
fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Negative answers: kept for `negative_ttl` unless the upstream said otherwise.
pub(super) fn is_negative(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 410)
}

/// A route's freshness settings: what applies when the response gives no explicit freshness.
#[derive(Debug, Clone)]
pub(super) struct Defaults {
    /// Targeted cache-control fields obeyed before `Cache-Control` (RFC 9213), in order.
    pub targeted: Vec<HeaderName>,
    /// Forced on a 200/204 without explicit or heuristic freshness; `None`: not stored.
    pub ttl: Option<Duration>,
    /// 404/410 without explicit freshness; zero: not stored.
    pub negative_ttl: Duration,
    /// Heuristic freshness: this share of the time since `Last-Modified`, at most the duration.
    pub heuristic: Option<(f64, Duration)>,
}

/// An HTTP-date (RFC 9110 §5.6.7, all three forms) in Unix milliseconds; `None` when absent or
/// invalid.
pub(super) fn date_ms(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    parse_date_ms(headers.get(name)?)
}

/// [`date_ms`] of one value.
pub(super) fn parse_date_ms(value: &HeaderValue) -> Option<u64> {
    let text = value.to_str().ok()?;
    httpdate::parse_http_date(text.trim())
        .ok()
        .map(crate::clock::unix_ms)
}

/// Whether a response carries a validator (`ETag` or `Last-Modified`) to revalidate it with.
pub(super) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// How long a response stays fresh in a shared cache (zero: stored, but revalidated before
/// every use), or `None` when it must not be stored. `now_ms` is when it arrived (for a
/// response without `Date`).
///
/// Explicit freshness first (RFC 9111 §4.2.1): `s-maxage`, `max-age`, then `Expires` less
/// `Date` (an invalid `Expires` is already expired). Then `negative_ttl` for 404/410, heuristic
/// freshness when the route asks for it (§4.2.2), and the route's `ttl` for a 200/204. A
/// response without freshness but with a validator (`no-cache`, `max-age=0`, an expired
/// `Expires`) is stored stale, to be revalidated. A request with `Authorization` is stored only
/// when the route allows it (`cache_authorized`) or the response says `public` or `s-maxage`.
pub(super) fn freshness(
    status: StatusCode,
    response: &HeaderMap,
    authorized: bool,
    defaults: &Defaults,
    now_ms: u64,
) -> Option<Duration> {
    if !cacheable_status(status) {
        return None;
    }
    let (cc, targeted) = CacheControl::policy(response, &defaults.targeted);
    if cc.no_store || cc.private {
        return None;
    }
    if response.contains_key(header::SET_COOKIE) && !cc.withheld.contains(&header::SET_COOKIE) {
        // One client's cookie must never be handed to another (unless the response says
        // `private="Set-Cookie"`: then it is stored without it).
        return None;
    }
    if authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        // RFC 9111 §3.5: only these three let a shared cache store an authorized answer.
        return None;
    }
    let validator = has_validator(response);
    let stale_on_arrival = || validator.then_some(Duration::ZERO);
    if cc.no_cache {
        // Stored, and revalidated on every use: worth it only with a validator.
        return stale_on_arrival();
    }
    let explicit = match cc.s_maxage.or(cc.max_age) {
        Some(seconds) => Some(Duration::from_secs(seconds)),
        None if targeted => None,
        None => response.get(header::EXPIRES).map(|expires| {
            let date = date_ms(response, &header::DATE).unwrap_or(now_ms);
            // An invalid Expires ("0", "-1", garbage), or several, means already expired
            // (§5.3, §4.2.1).
            if response.get_all(header::EXPIRES).iter().nth(1).is_some() {
                return Duration::ZERO;
            }
            parse_date_ms(expires).map_or(Duration::ZERO, |expires| {
                Duration::from_millis(expires.saturating_sub(date))
            })
        }),
    };
    if let Some(lifetime) = explicit {
        return if lifetime.is_zero() {
            stale_on_arrival()
        } else {
            Some(lifetime)
        };
    }
    if is_negative(status) && !defaults.negative_ttl.is_zero() {
        return Some(defaults.negative_ttl);
    }
    if let Some((fraction, max)) = defaults.heuristic {
        if let Some(modified) = date_ms(response, &header::LAST_MODIFIED) {
            let date = date_ms(response, &header::DATE).unwrap_or(now_ms);
            let since = Duration::from_millis(date.saturating_sub(modified));
            let lifetime = since.mul_f64(fraction.clamp(0.0, 1.0)).min(max);
            if !lifetime.is_zero() {
                return Some(lifetime);
            }
        }
    }
    if status == StatusCode::OK || status == StatusCode::NO_CONTENT {
        return defaults.ttl;
    }
    // Other heuristically cacheable statuses only with explicit or heuristic freshness.
    None
}

/// How old a response already is when it arrives (RFC 9111 §4.2.3): the larger of its apparent
/// age (`now_ms` less `Date`) and the `Age` it carries plus `delay_ms`, the time the request
/// took.
pub(super) fn initial_age_ms(response: &HeaderMap, now_ms: u64, delay_ms: u64) -> u64 {
    let apparent = date_ms(response, &header::DATE).map_or(0, |date| now_ms.saturating_sub(date));
    let corrected = age(response).saturating_mul(1000).saturating_add(delay_ms);
    apparent.max(corrected)
}

/// Fields of a `304` that never replace the stored ones (RFC 9111 §3.2: the stored body's
/// length and encoding, and hop-by-hop fields).
const NOT_UPDATED: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::CONTENT_RANGE,
];

/// The stored fields updated by a `304` (RFC 9111 §3.2, §4.3.4): each field of the `304`
/// replaces the stored one of its name, except [`NOT_UPDATED`]. Its `Age` and `Date` are the
/// new answer's; without a `Date` the stored one (of the first answer) would count the whole
/// time since then as age, so it becomes now.
pub(super) fn updated_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    headers.remove(header::AGE);
    if !not_modified.contains_key(header::DATE) {
        if let Ok(now) =
            HeaderValue::try_from(httpdate::fmt_http_date(std::time::SystemTime::now()))
        {
            headers.insert(header::DATE, now);
        }
    }
    for name in not_modified.keys() {
        if NOT_UPDATED.contains(name) {
            continue;
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Whether a `304` confirms the stored response (RFC 9111 §4.3.4): unless both carry an
/// `ETag` and the 304's is strong and differs from the stored one.
pub(super) fn same_representation(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    let (Some(new), Some(old)) = (
        not_modified.get(header::ETAG).and_then(|v| v.to_str().ok()),
        stored.get(header::ETAG).and_then(|v| v.to_str().ok()),
    ) else {
        return true;
    };
    let (new, old) = (new.trim(), old.trim());
    if new.starts_with("W/") {
        // Weak: the opaque tags compared (RFC 9110 §8.8.3.2).
        new.trim_start_matches("W/") == old.trim_start_matches("W/")
    } else {
        new == old
    }
}

/// Whether the answer to an unsafe request invalidates the cached URL (RFC 9111 §4.4): the
/// method is not safe and the status is 2xx or 3xx.
pub(super) fn invalidates(method: &Method, status: StatusCode) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) && (status.is_success() || status.is_redirection())
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

/// The part of a cache key that the request's values of `names` make, normalised as RFC 9111
/// §4.1 allows: whitespace around values, several field lines combined, and for the list fields
/// of content negotiation (`Accept*`) the elements trimmed (also around `;` and `=`), and for
/// those whose values are case-insensitive (`Accept-Encoding`, `Accept-Language`,
/// `Accept-Charset`) lowercased — `Accept-Encoding`'s elements also sorted (their order means
/// nothing). Any other field is kept as sent, less the whitespace at its ends.
pub(super) fn variant(names: &[HeaderName], request: &HeaderMap) -> String {
    let mut text = String::new();
    for name in names {
        text.push('|');
        text.push_str(name.as_str());
        text.push('=');
        let list = matches!(
            name.as_str(),
            "accept" | "accept-encoding" | "accept-language" | "accept-charset"
        );
        if !list {
            let mut first = true;
            for value in request.get_all(name) {
                if !first {
                    text.push(',');
                }
                first = false;
                text.push_str(String::from_utf8_lossy(value.as_bytes()).trim());
            }
            continue;
        }
        let lowercase = name.as_str() != "accept";
        let mut elements: Vec<String> = Vec::new();
        for value in request.get_all(name) {
            let value = String::from_utf8_lossy(value.as_bytes());
            for element in value.split(',') {
                let element: String = element
                    .split(';')
                    .map(|part| part.split('=').map(str::trim).collect::<Vec<_>>().join("="))
                    .collect::<Vec<_>>()
                    .join(";");
                if element.is_empty() {
                    continue;
                }
                elements.push(if lowercase {
                    element.to_ascii_lowercase()
                } else {
                    element
                });
            }
        }
        if name.as_str() == "accept-encoding" {
            elements.sort();
        }
        text.push_str(&elements.join(","));
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

/// Whether `If-Modified-Since` of the request is satisfied by `last_modified` (the stored
/// representation was not modified since): both valid HTTP-dates and `last_modified` not later.
pub(super) fn not_modified_since(
    if_modified_since: &HeaderValue,
    last_modified: &HeaderValue,
) -> bool {
    match (
        parse_date_ms(if_modified_since),
        parse_date_ms(last_modified),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The one byte range `range` (a `Range` field) asks of a body of `length` bytes: `None` when
/// it is not a single byte range (several ranges, another unit, malformed: the whole body is
/// answered, as RFC 9110 §14.2 allows), `Some(Err(()))` when unsatisfiable.
pub(super) fn byte_range(range: &str, length: usize) -> Option<Result<std::ops::Range<usize>, ()>> {
    let spec = range.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |text: &str| -> Option<Option<u64>> {
        let text = text.trim();
        if text.is_empty() {
            return Some(None);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Some(text.parse().unwrap_or(u64::MAX)))
    };
    let length64 = length as u64;
    let (start, end) = match (number(first)?, number(last)?) {
        (Some(start), last) => {
            if last.is_some_and(|last| last < start) {
                return None;
            }
            if start >= length64 {
                return Some(Err(()));
            }
            let end = last.map_or(length64, |last| last.saturating_add(1).min(length64));
            (start, end)
        }
        (None, Some(suffix)) => {
            if suffix == 0 || length == 0 {
                return Some(Err(()));
            }
            (length64.saturating_sub(suffix), length64)
        }
        (None, None) => return None,
    };
    let start = usize::try_from(start).ok()?;
    let end = usize::try_from(end).ok()?;
    Some(Ok(start..end))
}

/// Whether `If-Range` matches the stored response (RFC 9110 §13.1.5): a strong `ETag` equal to
/// it, or a date equal to its `Last-Modified`.
pub(super) fn if_range_matches(if_range: &HeaderValue, stored: &HeaderMap) -> bool {
    let Ok(text) = if_range.to_str() else {
        return false;
    };
    let text = text.trim();
    if text.starts_with('"') {
        return stored
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|etag| !etag.starts_with("W/") && etag.trim() == text);
    }
    match (
        parse_date_ms(if_range),
        date_ms(stored, &header::LAST_MODIFIED),
    ) {
        (Some(date), Some(modified)) => date == modified,
        _ => false,
    }
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
mod tests;
