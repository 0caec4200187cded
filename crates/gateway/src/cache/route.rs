//! One route's view of the cache ([`RouteCache`]): the settings of its `[routes.cache]`, the
//! keys of its requests, and [`RouteCache::lookup`], which answers from the cache or hands back
//! a [`Fetch`] (misses go through a flight, in `flight`).

use std::sync::Arc;
use std::time::Duration;

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::request::Parts;
use ::http::{Method, Response};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::answer::{respond, Conditional};
use super::entry::{now_ms, Entry};
use super::flight::VaryMarker;
use super::respond::{status_value, EntryKey};
use super::store::{CacheStore, Tier};
use super::{http, Fetch};
use crate::body::ResponseBody;
use crate::edge::GatewayError;

/// The counters of one cached route.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    pub hit: Counter,
    pub miss: Counter,
    pub stale: Counter,
    pub stale_if_error: Counter,
    pub coalesced: Counter,
    pub negative: Counter,
    pub bypass: Counter,
    /// A stale entry the origin confirmed (a 304 to a conditional request).
    pub revalidated: Counter,
}

/// One route's view of the cache.
#[derive(Debug)]
pub struct RouteCache {
    pub(super) store: Arc<CacheStore>,
    pub(super) route: Arc<str>,
    /// `<route>:v<version>:`, the start of every key of the route.
    prefix: String,
    pub(super) defaults: http::Defaults,
    /// With the shared tier: the longest an entry stays in process (how long a missed purge
    /// may go unnoticed). Without it entries stay in process for their freshness.
    pub(super) l1_ttl: Option<Duration>,
    pub(super) swr: Duration,
    pub(super) sie: Duration,
    pub(super) max_body: u64,
    pub(super) cache_authorized: bool,
    pub(super) jitter: f64,
    pub(super) lock_wait: Duration,
    pub(super) metrics: CacheMetrics,
}

/// What the cache says about a request.
#[derive(Debug)]
pub enum Lookup {
    /// Not for the cache (the reason goes into `Cache-Status`).
    Pass(HeaderValue),
    /// Answered from the cache.
    Hit(Response<ResponseBody>, HeaderValue),
    /// Answered from the cache; this fetch refreshes the entry in the background.
    HitRefresh(Response<ResponseBody>, HeaderValue, Box<Fetch>),
    /// Go to the upstream, then [`Fetch::finish`] (boxed: it is larger than an answer).
    Fetch(Box<Fetch>),
    /// Refused without going to the upstream (`only-if-cached` and nothing usable stored).
    Refuse(GatewayError, HeaderValue),
}

impl RouteCache {
    /// The cache of route `route` configured by `config`, on `store`.
    pub fn new(
        store: Arc<CacheStore>,
        route: &str,
        config: &sekisho_config::Cache,
        metrics: CacheMetrics,
    ) -> Self {
        Self {
            store,
            route: Arc::from(route),
            prefix: format!("{route}:v{}:", config.version.0),
            defaults: http::Defaults {
                targeted: config
                    .targeted
                    .iter()
                    .filter_map(|name| HeaderName::try_from(name.to_ascii_lowercase()).ok())
                    .collect(),
                ttl: config.ttl.map(|t| t.get()),
                negative_ttl: config.negative_ttl.0,
                heuristic: config
                    .heuristic
                    .then(|| (config.heuristic_fraction.0, config.heuristic_max.get())),
            },
            l1_ttl: config.l1_ttl.map(|t| t.get()),
            swr: config.stale_while_revalidate.0,
            sie: config.stale_if_error.0,
            max_body: config.max_body_bytes.0,
            cache_authorized: config.cache_authorized,
            jitter: config.ttl_jitter.0.clamp(0.0, 0.99),
            lock_wait: config.lock_wait.get(),
            metrics,
        }
    }

    /// The key of a request: `<route>:v<version>:<host><path>?<query>` (the documented,
    /// versioned scheme: bumping `version` orphans every entry of the route at once).
    pub fn key(&self, parts: &Parts) -> String {
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut key = self.key_base(parts, path.len());
        key.push_str(path);
        key
    }

    /// `<route>:v<version>:`, the start of every key of the route.
    pub(super) fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// `<route>:v<version>:<host>`, with room for `extra` more bytes.
    pub(super) fn key_base(&self, parts: &Parts, extra: usize) -> String {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let mut key = String::with_capacity(self.prefix.len() + host.len() + extra);
        key.push_str(&self.prefix);
        key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
        key
    }

    /// Looks `parts` up; the request's conditional headers are taken off when the cache will
    /// store what the upstream sends (it answers them itself).
    pub async fn lookup(self: &Arc<Self>, parts: &mut Parts, deadline: Instant) -> Lookup {
        if let Some(reason) =
            http::request_bypass(&parts.method, &parts.headers, self.cache_authorized)
        {
            self.metrics.bypass.inc();
            if reason == "method" {
                // An unsafe method: its success invalidates the URL's entry (RFC 9111 §4.4).
                return Lookup::Fetch(Box::new(self.invalidating(parts)));
            }
            return Lookup::Pass(status_value(format_args!("fwd={reason}")));
        }
        let primary = self.key(parts);
        let request_cc = http::CacheControl::parse(&parts.headers);
        let revalidate = http::wants_revalidation(&request_cc, &parts.headers);
        let store = !request_cc.no_store;
        let conditional = Conditional::of(&parts.headers);
        let mut stale = None;
        let mut why = "uri-miss";
        let mut variant_of = None;

        if !revalidate {
            let (found, marker) = self.find(&primary, &parts.headers).await;
            variant_of = marker;
            if let Some((entry, tier)) = found {
                let now = now_ms();
                let ttl = entry.ttl_ms(now);
                let stale_by = Duration::from_millis(ttl.unsigned_abs());
                // A fresh entry (refreshed early now and then), or a stale one within its
                // stale-while-revalidate window (always refreshed): answered from the cache,
                // when the client's own limits (max-age, min-fresh) accept it; else it is
                // revalidated as a stale one.
                let acceptable = http::acceptable_to_client(&request_cc, entry.age_ms(now), ttl);
                let served = if !acceptable {
                    None
                } else if ttl > 0 {
                    if http::is_negative(entry.status) {
                        self.metrics.negative.inc();
                    } else {
                        self.metrics.hit.inc();
                    }
                    let detail = if tier == Tier::L2 { "; detail=l2" } else { "" };
                    let status = status_value(format_args!("hit; ttl={}{detail}", ttl / 1000));
                    Some((status, early_refresh(&entry, ttl)))
                } else if entry.swr_ms > 0 && stale_by <= Duration::from_millis(entry.swr_ms) {
                    self.metrics.stale.inc();
                    let status = status_value(format_args!(
                        "hit; ttl={}; detail=stale-while-revalidate",
                        ttl / 1000
                    ));
                    Some((status, true))
                } else if ttl <= 0
                    && request_cc
                        .max_stale
                        .is_some_and(|s| stale_by <= Duration::from_secs(s.min(u64::MAX / 2000)))
                    && !http::CacheControl::policy(&entry.headers, &self.defaults.targeted)
                        .0
                        .demands_revalidation()
                {
                    // The client accepts it this stale (max-stale, RFC 9111 §5.2.1.2), and the
                    // response does not forbid it.
                    self.metrics.stale.inc();
                    let status =
                        status_value(format_args!("hit; ttl={}; detail=max-stale", ttl / 1000));
                    Some((status, false))
                } else {
                    None
                };
                if let Some((status, refresh)) = served {
                    let response = respond(&entry, now, &parts.method, &conditional);
                    if refresh && parts.method == Method::GET {
                        if let Some(lead) = self.try_lead(&primary) {
                            let fetch = self.fetch(
                                EntryKey {
                                    primary,
                                    variant_of,
                                },
                                parts,
                                Some(lead),
                                true,
                                Some(entry),
                                "stale",
                            );
                            return Lookup::HitRefresh(response, status, Box::new(fetch));
                        }
                    }
                    return Lookup::Hit(response, status);
                }
                stale = Some(entry);
                // Still fresh, but not enough for this client: the request's doing.
                why = if ttl > 0 { "request" } else { "stale" };
            }
        } else {
            why = "request";
        }

        if request_cc.only_if_cached {
            // Nothing stored answers it, and the client forbade the upstream (RFC 9111
            // §5.2.1.7): 504.
            self.metrics.miss.inc();
            return Lookup::Refuse(
                GatewayError::NotCached {
                    route: Arc::clone(&self.route),
                },
                status_value(format_args!("fwd={why}; detail=only-if-cached")),
            );
        }
        if !store || parts.method != Method::GET {
            return self.miss(
                EntryKey {
                    primary,
                    variant_of,
                },
                parts,
                false,
                stale,
                why,
            );
        }
        self.collapse(primary, variant_of, parts, stale, why, deadline)
            .await
    }

    /// The entry, and the marker found at the primary key when the response varies (kept
    /// even when this variant is missing, so the new variant joins the same generation).
    async fn find(
        &self,
        primary: &str,
        request: &HeaderMap,
    ) -> (Option<(Arc<Entry>, Tier)>, Option<VaryMarker>) {
        let Some((entry, tier)) = self.store.get(primary, self.l1_ttl).await else {
            return (None, None);
        };
        match &entry.vary {
            None => (Some((entry, tier)), None),
            Some(vary) => {
                let key = self.variant_key(primary, Some(vary), request);
                let variant = self.store.get(&key, self.l1_ttl).await;
                (variant, Some(vary.clone()))
            }
        }
    }

    pub(super) fn variant_key(
        &self,
        primary: &str,
        vary: Option<&VaryMarker>,
        request: &HeaderMap,
    ) -> String {
        match vary {
            None => primary.to_owned(),
            Some((names, generation)) => {
                format!("{primary}#{generation:x}{}", http::variant(names, request))
            }
        }
    }
}

/// Whether to refresh a fresh entry early (XFetch: probability rising as its end nears, in
/// proportion to how long a fetch takes).
fn early_refresh(entry: &Entry, ttl_ms: i64) -> bool {
    if entry.fetch_ms == 0 {
        return false;
    }
    let draw = -(fastrand::f64().max(f64::MIN_POSITIVE)).ln();
    entry.fetch_ms as f64 * draw >= ttl_ms as f64
}

#[cfg(test)]
mod tests {
    use ::http::StatusCode;
    use bytes::Bytes;

    use super::*;

    fn entry(fetch_ms: u64) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            stored_ms: 0,
            initial_age_ms: 0,
            lifetime_ms: 60_000,
            swr_ms: 0,
            sie_ms: 0,
            fetch_ms,
            tags: Vec::new(),
            vary: None,
        }
    }

    #[test]
    fn early_refresh_grows_likelier_as_the_end_nears() {
        assert!(
            !early_refresh(&entry(0), 1),
            "no fetch time known: never early"
        );
        let slow = entry(100);
        assert!(
            (0..1000).all(|_| early_refresh(&slow, 0)),
            "at the end: always"
        );
        assert!(
            (0..1000).all(|_| !early_refresh(&slow, 60_000)),
            "far from it: never"
        );
        // With time left equal to the fetch time: P = P(−ln u ≥ 1) = 1/e ≈ 0.368.
        let hits = (0..10_000).filter(|_| early_refresh(&slow, 100)).count();
        assert!((3300..=4100).contains(&hits), "{hits}");
    }
}
