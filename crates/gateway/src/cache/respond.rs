//! Answers from the cache: a stored entry as a response (or a `304`), the `Cache-Status`
//! header, and [`Fetch`], a miss on its way to the upstream, whose [`Fetch::finish`] stores
//! the upstream's answer (and ends the flight it leads) or serves a stale copy when it failed.

use std::sync::Arc;
use std::time::Duration;

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::request::Parts;
use ::http::{Method, Response, StatusCode};
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use tokio::time::Instant;

use super::answer::{respond, Conditional};
use super::entry::{now_ms, Entry};
use super::flight::{FlightEnd, Lead, VaryMarker};
use super::http;
use super::{Lookup, RouteCache};
use crate::body::ResponseBody;
use crate::edge::GatewayError;

/// The response header of RFC 9211.
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The cache's name in `Cache-Status`.
const NAME: &str = "sekisho";

/// A miss on its way to the upstream.
#[derive(Debug)]
pub struct Fetch {
    cache: Arc<RouteCache>,
    primary: String,
    variant_of: Option<VaryMarker>,
    request_headers: HeaderMap,
    method: Method,
    conditional: Conditional,
    lead: Option<Lead>,
    store: bool,
    stale: Option<Arc<Entry>>,
    /// Whether the request asks the origin to confirm `stale` (its validators were sent).
    revalidating: bool,
    /// For an unsafe method: `<route>:v<n>:<host>`, to invalidate the URL's entry (and those of
    /// `Location`/`Content-Location`) when the answer is a success.
    invalidate: Option<String>,
    started: Instant,
    why: &'static str,
}

/// Where a fetched answer is stored: the primary key, and the Vary marker when the response
/// varies (the variant's key is made from it and the request).
pub(super) struct EntryKey {
    pub(super) primary: String,
    pub(super) variant_of: Option<VaryMarker>,
}

impl RouteCache {
    /// A miss counted, and the fetch that goes to the upstream for it (no flight to lead).
    pub(super) fn miss(
        self: &Arc<Self>,
        key: EntryKey,
        parts: &mut Parts,
        store: bool,
        stale: Option<Arc<Entry>>,
        why: &'static str,
    ) -> Lookup {
        self.metrics.miss.inc();
        Lookup::Fetch(Box::new(self.fetch(key, parts, None, store, stale, why)))
    }

    /// A fetch of `key` from the upstream for this request; `lead` when this request leads a
    /// flight others wait on, `store` when its answer may be stored, `stale` the entry to fall
    /// back on, `why` the `fwd` of its `Cache-Status`.
    pub(super) fn fetch(
        self: &Arc<Self>,
        EntryKey {
            primary,
            variant_of,
        }: EntryKey,
        parts: &mut Parts,
        lead: Option<Lead>,
        store: bool,
        stale: Option<Arc<Entry>>,
        why: &'static str,
    ) -> Fetch {
        let conditional = Conditional::of(&parts.headers);
        let mut revalidating = false;
        if store {
            // The cache answers conditionals itself; the upstream must send the whole answer,
            // or confirm the stale copy with its validators (RFC 9111 §4.3.1).
            parts.headers.remove(header::IF_NONE_MATCH);
            parts.headers.remove(header::IF_MODIFIED_SINCE);
            if let (Some(stale), true) = (&stale, parts.method == Method::GET) {
                if let Some(etag) = stale.headers.get(header::ETAG) {
                    parts.headers.insert(header::IF_NONE_MATCH, etag.clone());
                    revalidating = true;
                }
                if let Some(modified) = stale.headers.get(header::LAST_MODIFIED) {
                    parts
                        .headers
                        .insert(header::IF_MODIFIED_SINCE, modified.clone());
                    revalidating = true;
                }
            }
        }
        Fetch {
            cache: Arc::clone(self),
            primary,
            variant_of,
            request_headers: parts.headers.clone(),
            method: parts.method.clone(),
            conditional,
            lead,
            store,
            stale,
            revalidating,
            invalidate: None,
            started: Instant::now(),
            why,
        }
    }

    /// The fetch of an unsafe request (`fwd=method`): nothing stored, but a success invalidates
    /// the URL's entry.
    pub(super) fn invalidating(self: &Arc<Self>, parts: &Parts) -> Fetch {
        Fetch {
            cache: Arc::clone(self),
            primary: self.key(parts),
            variant_of: None,
            request_headers: HeaderMap::new(),
            method: parts.method.clone(),
            conditional: Conditional::default(),
            lead: None,
            store: false,
            stale: None,
            revalidating: false,
            invalidate: Some(self.key_base(parts, 0)),
            started: Instant::now(),
            why: "method",
        }
    }
}

impl Fetch {
    /// The upstream's answer, through the cache: stored and answered from the entry when it may
    /// be stored, a stale copy when the upstream failed within `stale_if_error`, else as it is.
    /// The second value is the `Cache-Status` of the answer.
    pub async fn finish(
        mut self,
        result: Result<Response<ResponseBody>, GatewayError>,
    ) -> (Result<Response<ResponseBody>, GatewayError>, HeaderValue) {
        let why = self.why;
        if let (Some(base), Ok(response)) = (&self.invalidate, &result) {
            if http::invalidates(&self.method, response.status()) {
                self.cache
                    .invalidate(&self.primary, base, response.headers())
                    .await;
            }
        }
        let failed = match &result {
            Ok(response) => matches!(response.status().as_u16(), 500 | 502 | 503 | 504),
            Err(error) => error.is_upstream_failure(),
        };
        if failed {
            if let Some(stale) = self.usable_stale() {
                self.cache.metrics.stale_if_error.inc();
                let fwd_status = match &result {
                    Ok(response) => response.status().as_u16(),
                    Err(error) => error.status().as_u16(),
                };
                let now = now_ms();
                let status = status_value(format_args!(
                    "fwd={why}; fwd-status={fwd_status}; ttl={}; detail=stale-if-error",
                    stale.ttl_ms(now) / 1000
                ));
                let response = respond(&stale, now, &self.method, &self.conditional);
                return (Ok(response), status);
            }
            if let (Some(stale), Err(_)) = (&self.stale, &result) {
                if stale.ttl_ms(now_ms()) <= 0
                    && http::CacheControl::policy(&stale.headers, &self.cache.defaults.targeted)
                        .0
                        .demands_revalidation()
                {
                    // must-revalidate (and its kin): 504 rather than the stale copy when the
                    // origin cannot confirm it (RFC 9111 §5.2.2.2).
                    let status = status_value(format_args!("fwd={why}; detail=must-revalidate"));
                    if let Err(error) = result {
                        return (
                            Err(GatewayError::Unrevalidated {
                                upstream: Arc::from(self.cache.route.as_ref()),
                                source: Box::new(error),
                            }),
                            status,
                        );
                    }
                    return (result, status);
                }
            }
        }
        let mut revalidated = false;
        if let (Ok(response), Some(stale)) = (&result, &self.stale) {
            if self.revalidating
                && response.status() == StatusCode::NOT_MODIFIED
                && !http::same_representation(&stale.headers, response.headers())
            {
                // A 304 naming another representation (another strong ETag) must not update
                // the stored one (RFC 9111 §4.3.4), and is no answer to this request: the
                // entry goes, and the request fails as an upstream error.
                self.cache
                    .invalidate(&self.primary, "", &HeaderMap::new())
                    .await;
                return (
                    Err(GatewayError::UpstreamFailed {
                        upstream: Arc::from(self.cache.route.as_ref()),
                        source: "a 304 for another representation than the cached one".into(),
                    }),
                    status_value(format_args!("fwd={why}; fwd-status=304")),
                );
            }
        }
        let result = match (result, &self.stale) {
            (Ok(response), Some(stale))
                if self.revalidating && response.status() == StatusCode::NOT_MODIFIED =>
            {
                // The origin confirmed the stale copy: its fields updated by the 304's, stored
                // again with the freshness they give (RFC 9111 §4.3.4).
                revalidated = true;
                self.cache.metrics.revalidated.inc();
                let mut updated = Response::new(ResponseBody::full(stale.body.clone()));
                *updated.status_mut() = stale.status;
                *updated.headers_mut() = http::updated_headers(&stale.headers, response.headers());
                Ok(updated)
            }
            (result, _) => result,
        };
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let status = status_value(format_args!("fwd={why}"));
                return (Err(error), status);
            }
        };
        let fwd_status = if revalidated {
            StatusCode::NOT_MODIFIED.as_u16()
        } else {
            response.status().as_u16()
        };
        let pass = |response| {
            (
                Ok(response),
                status_value(format_args!("fwd={why}; fwd-status={fwd_status}")),
            )
        };
        if self.method == Method::HEAD && response.status() == StatusCode::OK {
            if let Some(stale) = self.stale.take() {
                self.freshen_from_head(&stale, response.headers()).await;
            }
        }
        if !self.store || self.method != Method::GET {
            return pass(response);
        }
        let cache = Arc::clone(&self.cache);
        let authorized = http::is_authorized(&self.request_headers);
        let Some(lifetime) = http::freshness(
            response.status(),
            response.headers(),
            authorized && !cache.cache_authorized,
            &cache.defaults,
            now_ms(),
        ) else {
            return pass(response);
        };
        let Some(vary) = http::vary(response.headers()) else {
            return pass(response);
        };
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > cache.max_body) {
            return pass(response);
        }
        let (head, body) = response.into_parts();
        let body = match collect(body, cache.max_body).await {
            Collected::Whole(bytes) => bytes,
            Collected::TooLarge(prefix, rest) => {
                let response = Response::from_parts(head, ResponseBody::prefixed(prefix, rest));
                return pass(response);
            }
            Collected::Failed(error) => {
                return (
                    Err(GatewayError::UpstreamFailed {
                        upstream: Arc::from(cache.route.as_ref()),
                        source: error,
                    }),
                    status_value(format_args!("fwd={why}")),
                );
            }
        };
        let entry = cache.entry(&head, body, lifetime, self.started);
        let now = now_ms();
        let (key, vary) = cache
            .store_entry(
                &self.primary,
                &vary,
                entry.clone(),
                &self.request_headers,
                self.variant_of.take(),
            )
            .await;
        let entry = Arc::new(entry);
        if let Some(lead) = self.lead.take() {
            lead.end(FlightEnd::Stored(Arc::clone(&entry), key, vary));
        }
        let status = status_value(format_args!(
            "fwd={why}; fwd-status={fwd_status}; stored; ttl={}",
            entry.ttl_ms(now) / 1000
        ));
        (
            Ok(respond(&entry, now, &self.method, &self.conditional)),
            status,
        )
    }

    /// A `200` to a `HEAD` for a stale stored `GET` (RFC 9111 §4.3.5): the same `ETag`,
    /// `Last-Modified` and `Content-Length` freshen the entry with the `HEAD`'s fields (as a
    /// `304` would); a different one invalidates it.
    async fn freshen_from_head(&mut self, stale: &Entry, head: &HeaderMap) {
        let cache = Arc::clone(&self.cache);
        let same = [header::ETAG, header::LAST_MODIFIED, header::CONTENT_LENGTH]
            .iter()
            .all(|name| {
                head.get(name)
                    .is_none_or(|v| stale.headers.get(name) == Some(v))
            });
        if !same {
            if let Err(error) = cache
                .store
                .purge(&super::Purge::Key(self.primary.clone()))
                .await
            {
                tracing::warn!(%error, "a HEAD's invalidation did not reach the shared tier");
            }
            return;
        }
        let mut updated = Response::new(());
        *updated.status_mut() = stale.status;
        *updated.headers_mut() = http::updated_headers(&stale.headers, head);
        let (parts, ()) = updated.into_parts();
        let authorized = self.request_headers.contains_key(header::AUTHORIZATION);
        let Some(lifetime) = http::freshness(
            parts.status,
            &parts.headers,
            authorized && !cache.cache_authorized,
            &cache.defaults,
            now_ms(),
        ) else {
            return;
        };
        let Some(vary) = http::vary(&parts.headers) else {
            return;
        };
        let entry = cache.entry(&parts, stale.body.clone(), lifetime, self.started);
        cache
            .store_entry(
                &self.primary,
                &vary,
                entry,
                &self.request_headers,
                self.variant_of.take(),
            )
            .await;
    }

    fn usable_stale(&self) -> Option<Arc<Entry>> {
        let stale = self.stale.as_ref()?;
        let ttl = stale.ttl_ms(now_ms());
        let stale_by = ttl.min(0).unsigned_abs();
        (stale.sie_ms > 0 && stale_by <= stale.sie_ms).then(|| Arc::clone(stale))
    }
}

impl RouteCache {
    fn entry(
        &self,
        head: &::http::response::Parts,
        body: Bytes,
        lifetime: Duration,
        started: Instant,
    ) -> Entry {
        let (cc, _) = http::CacheControl::policy(&head.headers, &self.defaults.targeted);
        let lifetime_ms = if lifetime.is_zero() {
            0
        } else {
            jittered_ms(lifetime, self.jitter)
        };
        let mut headers = head.headers.clone();
        headers.remove(header::AGE);
        headers.remove(&CACHE_STATUS);
        for name in &cc.withheld {
            // Qualified private / no-cache: stored without those fields.
            headers.remove(name);
        }
        // A response that demands revalidation gets only the stale windows it gives itself.
        let (swr, sie) = if cc.demands_revalidation() {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (self.swr, self.sie)
        };
        let now = now_ms();
        let fetch_ms = started.elapsed().as_millis() as u64;
        Entry {
            status: head.status,
            body,
            stored_ms: now,
            initial_age_ms: http::initial_age_ms(&head.headers, now, fetch_ms),
            lifetime_ms,
            swr_ms: cc
                .stale_while_revalidate
                .map_or(swr, Duration::from_secs)
                .as_millis() as u64,
            sie_ms: cc
                .stale_if_error
                .map_or(sie, Duration::from_secs)
                .as_millis() as u64,
            fetch_ms,
            tags: http::tags(&head.headers),
            vary: None,
            headers,
        }
    }

    /// Stores `entry` in both tiers (with a marker at the primary key when it varies); returns
    /// the key it is under, and the marker.
    async fn store_entry(
        &self,
        primary: &str,
        vary: &[HeaderName],
        entry: Entry,
        request: &HeaderMap,
        known: Option<VaryMarker>,
    ) -> (String, Option<VaryMarker>) {
        let entry = Arc::new(entry);
        let mut writes: Vec<(String, Arc<Entry>)> = Vec::with_capacity(2);
        let (key, marked) = if vary.is_empty() {
            writes.push((primary.to_owned(), Arc::clone(&entry)));
            (primary.to_owned(), None)
        } else {
            let marker_vary = match known {
                Some((names, generation)) if names == vary => (names, generation),
                _ => (vary.to_vec(), fastrand::u64(..)),
            };
            let key = self.variant_key(primary, Some(&marker_vary), request);
            let marker = Entry {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::new(),
                vary: Some(marker_vary.clone()),
                tags: entry.tags.clone(),
                ..(*entry).clone()
            };
            writes.push((primary.to_owned(), Arc::new(marker)));
            writes.push((key.clone(), Arc::clone(&entry)));
            (key, Some(marker_vary))
        };
        for (key, value) in &writes {
            self.store.l1_put(key, Arc::clone(value), self.l1_ttl);
        }
        if let Some(l2) = self.store.l2.load_full() {
            for (key, value) in writes {
                let keep = value.keep();
                if let Err(error) = l2.set(&key, &value.encode(), keep, &value.tags).await {
                    tracing::warn!(%error, key, "the shared cache tier did not take an entry");
                    break;
                }
            }
        }
        (key, marked)
    }
}

enum Collected {
    Whole(Bytes),
    TooLarge(Bytes, ResponseBody),
    Failed(crate::body::BoxError),
}

/// Reads `body` whole if it has at most `limit` bytes; else hands back what was read and the
/// rest, to be passed through.
async fn collect(mut body: ResponseBody, limit: u64) -> Collected {
    let mut buffer = BytesMut::new();
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Collected::Whole(buffer.freeze()),
            Some(Err(error)) => return Collected::Failed(error),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                    if buffer.len() as u64 > limit {
                        return Collected::TooLarge(buffer.freeze(), body);
                    }
                }
            }
        }
    }
}

/// `sekisho; <params>` as a header value, formatted once into its buffer.
pub(super) fn status_value(params: std::fmt::Arguments<'_>) -> HeaderValue {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(64);
    text.push_str(NAME);
    text.push_str("; ");
    let _ = text.write_fmt(params);
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(NAME))
}

/// `lifetime` in milliseconds, spread uniformly by ± `jitter` (avalanche guard), at least 1.
fn jittered_ms(lifetime: Duration, jitter: f64) -> u64 {
    let factor = 1.0 + jitter * (2.0 * fastrand::f64() - 1.0);
    (lifetime.as_millis() as f64 * factor).max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_spread_by_the_jitter() {
        let lifetime = Duration::from_secs(100);
        let spread: Vec<u64> = (0..2000).map(|_| jittered_ms(lifetime, 0.1)).collect();
        assert!(spread.iter().all(|&ms| (90_000..=110_000).contains(&ms)));
        assert!(spread.iter().any(|&ms| ms < 92_000), "reaches the low end");
        assert!(
            spread.iter().any(|&ms| ms > 108_000),
            "reaches the high end"
        );
        assert_eq!(jittered_ms(lifetime, 0.0), 100_000);
    }
}
