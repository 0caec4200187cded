//! One access-log line per request (`server.access_log = true`), target `sekisho::access`.

use http::Version;

use super::context::Exchange;

/// What the line needs of the request, taken before the request is consumed.
pub(super) struct AccessInfo {
    pub(super) method: http::Method,
    pub(super) path: String,
    pub(super) version: Version,
}

impl AccessInfo {
    /// Writes the line of `exchange`, answered `status` after `elapsed`.
    pub(super) fn log(self, exchange: &Exchange, status: u16, elapsed: std::time::Duration) {
        let Exchange {
            client,
            request_id,
            record: outcome,
            ..
        } = exchange;
        let route = outcome.route.as_ref().map(|r| &*r.name).unwrap_or("");
        let upstream = outcome
            .route
            .as_ref()
            .map(|r| &*r.upstream.name)
            .unwrap_or("");
        let error_code = outcome.error.as_ref().map(|e| e.code()).unwrap_or("");
        let error = outcome
            .error
            .as_ref()
            .map(|e| e.detail())
            .unwrap_or_default();
        tracing::info!(
            target: "sekisho::access",
            method = %self.method,
            path = %self.path,
            version = ?self.version,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            route,
            upstream,
            target_address = outcome.target.as_deref().unwrap_or(""),
            tries = outcome.attempts,
            fallback = outcome.fallback.unwrap_or(""),
            client = %client.remote.ip(),
            request_id = request_id.to_str().unwrap_or(""),
            error_code,
            error = %error,
            "request"
        );
    }
}
