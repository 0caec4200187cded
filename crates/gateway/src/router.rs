//! Route matching: the first route whose host, path, method and headers all match takes the
//! request.
//!
//! Routes are few (tens), so a linear scan in config order is both the fastest and the easiest
//! to predict: the order in the file is the order of precedence. Path prefixes are
//! segment-aware: `/api/orders` matches `/api/orders` and `/api/orders/7`, never
//! `/api/ordersx`.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use sekisho_config::Route;
use sekisho_policy::concurrency::AdaptiveLimit;

use crate::fallback::Fallback;
use crate::metrics::RouteMetrics;
use crate::retry::RetryPolicy;
use crate::upstream::UpstreamGroup;

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// Exactly this path.
    Exact(String),
    /// This path and everything below it.
    Prefix(String),
}

/// How a route matches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// Exactly this host (case-insensitive, port ignored).
    Exact(String),
    /// Any host ending in `.suffix`.
    Suffix(String),
}

/// Header rules of a route, parsed once.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderRules {
    /// Set on the request to the upstream.
    pub request_set: Vec<(HeaderName, HeaderValue)>,
    /// Removed from the request to the upstream.
    pub request_remove: Vec<HeaderName>,
    /// Set on the response to the client.
    pub response_set: Vec<(HeaderName, HeaderValue)>,
    /// Removed from the response to the client.
    pub response_remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// Whether a request rule (set or remove) names a header that `named` picks.
    pub(crate) fn request_names(&self, named: impl Fn(&HeaderName) -> bool) -> bool {
        self.request_remove.iter().any(&named)
            || self.request_set.iter().any(|(name, _)| named(name))
    }
}

/// A route ready to serve.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    /// The route's name.
    pub name: Arc<str>,
    path: PathMatch,
    host: Option<HostMatch>,
    methods: Option<Vec<Method>>,
    match_headers: Vec<(HeaderName, Option<HeaderValue>)>,
    /// The upstream serving it.
    pub upstream: Arc<UpstreamGroup>,
    /// Deadline of the whole request.
    pub timeout: Duration,
    /// Prefix removed before forwarding, when `strip_prefix` is set.
    pub strip_prefix: Option<String>,
    /// Request body limit.
    pub max_body_bytes: u64,
    /// Header rewriting.
    pub headers: HeaderRules,
    /// Metric handles.
    pub metrics: RouteMetrics,
    /// Retries, when `[routes.retry]` is set.
    pub retry: Option<RetryPolicy>,
    /// What answers when the upstream cannot, when `[routes.fallback]` is set.
    pub fallback: Option<Fallback>,
    /// The route's adaptive concurrency limit, when shedding is on for it.
    pub concurrency: Option<Arc<AdaptiveLimit>>,
    /// The route's rate limit, when `[routes.rate_limit]` is set.
    pub rate_limit: Option<crate::ratelimit::RateLimit>,
    /// The route's response cache, when `[routes.cache]` is set.
    pub cache: Option<Arc<crate::cache::RouteCache>>,
    /// Who may use the route, when `auth` is set.
    pub auth: Option<sekisho_config::RouteAuth>,
}

/// The routes in order.
#[derive(Debug, Default)]
pub(crate) struct Router {
    routes: Vec<Arc<CompiledRoute>>,
    /// Whether a route may shed a request before it is built (`proxy::early`).
    sheds_early: bool,
    /// Whether a route matches the host: without one, a request's host is not looked at.
    matches_hosts: bool,
}

/// The parts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteQuery<'a> {
    /// Host without port, if the request named one.
    pub host: Option<&'a str>,
    /// The path (no query).
    pub path: &'a str,
    /// The method.
    pub method: &'a Method,
    /// All headers.
    pub headers: &'a HeaderMap,
}

impl CompiledRoute {
    /// Whether a step reads or edits the upstream answer's fields on its way down (its cache,
    /// its response header rules): then the answer's fields are put in a map.
    pub(crate) fn reads_answer_fields(&self) -> bool {
        self.cache.is_some()
            || !self.headers.response_set.is_empty()
            || !self.headers.response_remove.is_empty()
    }

    /// How the route matches the path, for the admin API: `("prefix" | "exact", path)`.
    pub(crate) fn path_view(&self) -> (&'static str, &str) {
        match &self.path {
            PathMatch::Exact(path) => ("exact", path),
            PathMatch::Prefix(path) => ("prefix", path),
        }
    }

    /// The methods the route takes (`None`: any), for the admin API.
    pub(crate) fn methods_view(&self) -> Option<Vec<String>> {
        self.methods
            .as_ref()
            .map(|methods| methods.iter().map(|m| m.as_str().to_owned()).collect())
    }

    /// Builds a route from its config; `upstream` is already resolved.
    pub(crate) fn new(
        route: &Route,
        upstream: Arc<UpstreamGroup>,
        default_max_body: u64,
        metrics: RouteMetrics,
        retry: Option<RetryPolicy>,
        fallback: Option<Fallback>,
    ) -> Self {
        let path = match (&route.path, &route.path_prefix) {
            (Some(exact), _) => PathMatch::Exact(exact.get_ref().clone()),
            (None, Some(prefix)) => PathMatch::Prefix(prefix.get_ref().clone()),
            (None, None) => PathMatch::Prefix("/".to_owned()),
        };
        let host = route
            .host
            .as_ref()
            .map(|host| match host.strip_prefix("*.") {
                Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(host.to_ascii_lowercase()),
            });
        let match_headers = route
            .match_headers
            .iter()
            .map(|(name, value)| {
                let wanted = if value == "*" {
                    None
                } else {
                    HeaderValue::from_str(value).ok()
                };
                (name.to_header_name(), wanted)
            })
            .collect();
        let headers = route
            .headers
            .as_ref()
            .map(|rules| HeaderRules {
                request_set: header_pairs(&rules.request_set),
                request_remove: rules
                    .request_remove
                    .iter()
                    .map(|n| n.to_header_name())
                    .collect(),
                response_set: header_pairs(&rules.response_set),
                response_remove: rules
                    .response_remove
                    .iter()
                    .map(|n| n.to_header_name())
                    .collect(),
            })
            .unwrap_or_default();
        let strip_prefix = match (&path, route.strip_prefix) {
            (PathMatch::Prefix(prefix), true) => Some(prefix.trim_end_matches('/').to_owned()),
            _ => None,
        };
        Self {
            name: Arc::from(route.name.as_str()),
            path,
            host,
            methods: route
                .methods
                .as_ref()
                .map(|methods| methods.iter().map(|m| m.0.clone()).collect()),
            match_headers,
            upstream,
            timeout: route.timeout.get(),
            strip_prefix,
            max_body_bytes: route.max_body_bytes.map_or(default_max_body, |b| b.0),
            headers,
            metrics,
            retry,
            fallback,
            concurrency: None,
            rate_limit: None,
            cache: None,
            auth: route.auth.as_ref().map(|auth| auth.get_ref().clone()),
        }
    }

    /// Whether this route takes the request.
    pub(crate) fn matches(&self, query: &RouteQuery<'_>) -> bool {
        self.matches_line(query.host, query.path, query.method)
            && self.match_headers.iter().all(|(name, wanted)| {
                let mut values = query.headers.get_all(name).iter().peekable();
                match wanted {
                    None => values.peek().is_some(),
                    Some(wanted) => values.any(|value| value == wanted),
                }
            })
    }

    /// Whether the route's adaptive limit is the first step after routing that may answer: it
    /// has one, and no `auth`, rate limit or cache before it.
    pub(crate) fn sheds_first(&self) -> bool {
        self.concurrency.is_some()
            && self.auth.is_none()
            && self.rate_limit.is_none()
            && self.cache.is_none()
    }

    /// Whether the request's host (without port), path and method are the route's; its
    /// header matches are not looked at.
    fn matches_line(&self, host: Option<&str>, path: &str, method: &Method) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => prefix_matches(prefix, path),
        };
        if !path_ok {
            return false;
        }
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        if let Some(host_match) = &self.host {
            let Some(host) = host else {
                return false;
            };
            let ok = match host_match {
                HostMatch::Exact(exact) => host.eq_ignore_ascii_case(exact),
                HostMatch::Suffix(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// The path the upstream sees, after `strip_prefix`.
    pub(crate) fn upstream_path<'a>(&self, path: &'a str) -> &'a str {
        match &self.strip_prefix {
            Some(prefix) if !prefix.is_empty() => match path.get(prefix.len()..) {
                Some("") | None => "/",
                Some(rest) => rest,
            },
            _ => path,
        }
    }
}

fn header_pairs(
    pairs: &std::collections::BTreeMap<
        sekisho_config::HeaderNameString,
        sekisho_config::HeaderValueString,
    >,
) -> Vec<(HeaderName, HeaderValue)> {
    pairs
        .iter()
        .filter_map(|(name, value)| {
            Some((name.to_header_name(), HeaderValue::from_str(&value.0).ok()?))
        })
        .collect()
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; `/` and `/api/` match by plain prefix.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

impl Router {
    /// Routes in config order.
    pub(crate) fn new(routes: Vec<Arc<CompiledRoute>>) -> Self {
        let sheds_early = routes.iter().any(|route| route.sheds_first());
        let matches_hosts = routes.iter().any(|route| route.host.is_some());
        Self {
            routes,
            sheds_early,
            matches_hosts,
        }
    }

    /// Whether any route matches the host (without one, [`Router::find`] does not read it).
    pub(crate) fn matches_hosts(&self) -> bool {
        self.matches_hosts
    }

    /// Whether any route [sheds first](CompiledRoute::sheds_first).
    pub(crate) fn sheds_early(&self) -> bool {
        self.sheds_early
    }

    /// The first route that takes the request.
    pub(crate) fn find(&self, query: &RouteQuery<'_>) -> Option<&Arc<CompiledRoute>> {
        self.routes.iter().find(|route| route.matches(query))
    }

    /// The route [`Router::find`] would pick, found from the request line and the host alone
    /// (for a refusal decided before the request is built): `Some(None)` when no route takes
    /// it, `None` when a route that matches headers would have to look at them first.
    pub(crate) fn find_by_line(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<Option<&Arc<CompiledRoute>>> {
        for route in &self.routes {
            if route.matches_line(host, path, method) {
                return route.match_headers.is_empty().then_some(Some(route));
            }
        }
        Some(None)
    }

    /// All routes, in order.
    pub(crate) fn routes(&self) -> &[Arc<CompiledRoute>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_respect_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/anything"));
    }
}
