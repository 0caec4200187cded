//! `Cache-Control` read as RFC 9111 §5.2 says: quoted arguments, delta-seconds, duplicates.

use http::header::{self, HeaderMap, HeaderName};

/// The directives of one message's `Cache-Control` (every field line, comma-separated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::cache) struct CacheControl {
    pub no_store: bool,
    /// Unqualified `no-cache` (a qualified one only withholds its fields).
    pub no_cache: bool,
    /// Unqualified `private`.
    pub private: bool,
    /// The field names of a qualified `private="…"` or `no-cache="…"`: a shared cache may
    /// store the response without them (RFC 9111 §5.2.2.4, §5.2.2.7).
    pub withheld: Vec<HeaderName>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// A request's `min-fresh`.
    pub min_fresh: Option<u64>,
    /// A request's `max-stale` (without a value: any staleness, `u64::MAX`).
    pub max_stale: Option<u64>,
    /// A request's `only-if-cached`.
    pub only_if_cached: bool,
}

/// `Surrogate-Control` (Edge Architecture Specification 1.0), read with its own syntax when a
/// route lists it in `targeted`.
pub(in crate::cache) static SURROGATE_CONTROL: HeaderName =
    HeaderName::from_static("surrogate-control");

/// The device token sekisho answers to in `Surrogate-Control` (`max-age=60;sekisho`).
pub(in crate::cache) const SURROGATE_TOKEN: &str = "sekisho";

/// A `Surrogate-Control` directive and the device it targets (`max-age=60;abc`), if any: the
/// last `;` outside a quoted string.
fn split_target(directive: &str) -> (&str, Option<&str>) {
    let mut quoted = false;
    let mut split = None;
    for (i, c) in directive.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => split = Some(i),
            _ => {}
        }
    }
    match split {
        Some(i) => (&directive[..i], Some(directive[i + 1..].trim())),
        None => (directive, None),
    }
}

/// The largest delta-seconds a cache must handle; larger values are taken as this (RFC 9111
/// §1.2.2).
const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// The directives of a `Cache-Control` line: split on commas outside quoted strings.
fn directives(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// A directive's argument, unquoted (a quoted-string's escapes resolved).
fn argument(value: &str) -> String {
    let value = value.trim();
    match value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
    {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if !escaped && c == '\\' {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(c);
            }
            out
        }
        None => value.to_owned(),
    }
}

/// delta-seconds (RFC 9111 §1.2.2): digits only, capped at 2^31; `None` when invalid.
fn delta_seconds(value: Option<&str>) -> Option<u64> {
    let value = value?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        value
            .parse::<u64>()
            .map_or(DELTA_SECONDS_MAX, |v| v.min(DELTA_SECONDS_MAX)),
    )
}

/// Records a freshness directive: an invalid value, or a second one that disagrees with the
/// first, makes the response stale (RFC 9111 §4.2.1: "considered stale").
fn freshness_directive(slot: &mut Option<u64>, value: Option<&str>) {
    let seconds = delta_seconds(value).unwrap_or(0);
    *slot = match *slot {
        Some(first) if first != seconds => Some(0),
        _ => Some(seconds),
    };
}

impl CacheControl {
    /// Reads every `Cache-Control` line of `headers` as RFC 9111 §5.2 says: directive names
    /// case-insensitive, arguments as tokens or quoted strings (commas inside quotes do not split),
    /// unknown directives ignored. An invalid or conflicting `max-age`/`s-maxage` makes the
    /// response stale; an invalid `stale-*` is ignored. `no-cache` and `private` with field
    /// names are taken unqualified (the whole response; the safe reading for a shared cache).
    pub(in crate::cache) fn parse(headers: &HeaderMap) -> Self {
        Self::parse_field(headers, &header::CACHE_CONTROL)
    }

    /// The caching policy of a response for a cache that obeys the targeted fields `targeted`
    /// (RFC 9213: `CDN-Cache-Control`, …) before `Cache-Control`: the first of them present
    /// with a non-empty value, else `Cache-Control`. The second value says whether a targeted
    /// field was used (then `Expires` does not count either).
    pub(in crate::cache) fn policy(headers: &HeaderMap, targeted: &[HeaderName]) -> (Self, bool) {
        for name in targeted {
            let present = headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|t| !t.trim().is_empty()));
            if present {
                let policy = if *name == SURROGATE_CONTROL {
                    Self::parse_surrogate(headers, SURROGATE_TOKEN)
                } else {
                    Self::parse_field(headers, name)
                };
                return (policy, true);
            }
        }
        (Self::parse(headers), false)
    }

    /// Reads `Surrogate-Control` as the Edge Architecture Specification 1.0 writes it:
    /// `max-age=freshness[+stale]` (the stale part: how long a stale copy may answer when the
    /// origin cannot, i.e. `stale-if-error`), `no-store`, directives targeted at a device with
    /// `;token`. A directive targeted at `token` overrides the untargeted one of the same name;
    /// directives targeted at other devices are ignored. `no-store-remote` is for surrogates far
    /// from the origin (a gateway sits next to it) and `content` names ESI processing, which
    /// sekisho does not do: both are ignored.
    fn parse_surrogate(headers: &HeaderMap, token: &str) -> Self {
        let mut general = Self::default();
        let mut ours = Self::default();
        for line in headers.get_all(&SURROGATE_CONTROL) {
            let Ok(text) = line.to_str() else { continue };
            for directive in directives(text) {
                let (directive, target) = split_target(directive);
                let cc = match target {
                    None => &mut general,
                    Some(device) if device.eq_ignore_ascii_case(token) => &mut ours,
                    Some(_) => continue,
                };
                let (name, value) = match directive.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(argument(value))),
                    None => (directive.trim(), None),
                };
                if name.eq_ignore_ascii_case("no-store") {
                    cc.no_store = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    let value = value.unwrap_or_default();
                    let (fresh, stale) = match value.split_once('+') {
                        Some((fresh, stale)) => (fresh, Some(stale)),
                        None => (value.as_str(), None),
                    };
                    freshness_directive(&mut cc.max_age, Some(fresh.trim()));
                    if let Some(stale) = stale {
                        cc.stale_if_error = delta_seconds(Some(stale.trim()));
                    }
                }
            }
        }
        if ours.max_age.is_some() {
            general.max_age = ours.max_age;
            general.stale_if_error = ours.stale_if_error;
        }
        general.no_store |= ours.no_store;
        general
    }

    /// Reads every line of the `Cache-Control`-like field `name`.
    fn parse_field(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut cc = Self::default();
        for line in headers.get_all(name) {
            let Ok(text) = line.to_str() else { continue };
            for directive in directives(text) {
                let (name, value) = match directive.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(argument(value))),
                    None => (directive.trim(), None),
                };
                if name.is_empty() {
                    continue;
                }
                let value = value.as_deref();
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" | "private" => {
                        let fields: Vec<HeaderName> = value
                            .unwrap_or_default()
                            .split(',')
                            .map(str::trim)
                            .filter(|f| !f.is_empty())
                            .filter_map(|f| HeaderName::try_from(f.to_ascii_lowercase()).ok())
                            .collect();
                        if fields.is_empty() {
                            if name.eq_ignore_ascii_case("private") {
                                cc.private = true;
                            } else {
                                cc.no_cache = true;
                            }
                        } else {
                            cc.withheld.extend(fields);
                        }
                    }
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "max-age" => freshness_directive(&mut cc.max_age, value),
                    "s-maxage" => freshness_directive(&mut cc.s_maxage, value),
                    "stale-while-revalidate" => {
                        cc.stale_while_revalidate = delta_seconds(value);
                    }
                    "stale-if-error" => cc.stale_if_error = delta_seconds(value),
                    "min-fresh" => cc.min_fresh = delta_seconds(value),
                    "only-if-cached" => cc.only_if_cached = true,
                    "max-stale" => {
                        cc.max_stale = match value {
                            None => Some(u64::MAX),
                            Some(_) => delta_seconds(value),
                        };
                    }
                    _ => {}
                }
            }
        }
        cc
    }

    /// Whether a stale copy may be served only after the origin confirmed it (`must-revalidate`,
    /// `proxy-revalidate`, and `s-maxage`, which implies it in a shared cache, RFC 9111
    /// §5.2.2.10; `no-cache`, which asks for it on every use): the route's stale windows do not
    /// apply, only a `stale-if-error`/`stale-while-revalidate` the response gives itself.
    pub(in crate::cache) fn demands_revalidation(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some() || self.no_cache
    }
}
