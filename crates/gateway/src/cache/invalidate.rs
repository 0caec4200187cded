//! Invalidation by unsafe methods (RFC 9111 §4.4): the URL's entry, and those of the same-origin
//! `Location` and `Content-Location`, purged here, in the shared tier and on every instance.

use ::http::header::{self, HeaderMap};

use super::RouteCache;

impl RouteCache {
    /// Invalidates `primary` (and its variants) and the same-origin URLs of `Location` and
    /// `Content-Location` in `response` (RFC 9111 §4.4), here, in the shared tier and on
    /// every instance (the purge channel). `base` is `<route>:v<n>:<host>`.
    pub(super) async fn invalidate(&self, primary: &str, base: &str, response: &HeaderMap) {
        let mut keys = vec![primary.to_owned()];
        let host = base.strip_prefix(self.key_prefix()).unwrap_or_default();
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(path) = response
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| same_origin_path(v, host))
            else {
                continue;
            };
            let key = format!("{base}{path}");
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        // At once, so an unreachable Redis (each call bounded) delays the answer by one bound,
        // not one per key.
        let purges = keys.into_iter().map(|key| async move {
            if let Err(error) = self.store.purge(&super::Purge::Key(key.clone())).await {
                tracing::warn!(%error, key, "an unsafe request's invalidation did not reach the shared tier");
            }
        });
        futures_util::future::join_all(purges).await;
    }
}

/// The path (and query) of `location` when it names the same host as the request: a path, or
/// an absolute URL of that host.
fn same_origin_path(location: &str, host: &str) -> Option<String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(location.to_owned());
    }
    let uri: ::http::Uri = location.parse().ok()?;
    let authority = uri.authority()?;
    if !authority.as_str().eq_ignore_ascii_case(host) {
        return None;
    }
    Some(
        uri.path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
    )
}
