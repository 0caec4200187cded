//! Metric names, without the `_total` that counters get on exposition.

/// Requests answered, by route, upstream and status class.
pub(crate) const REQUESTS: &str = "sekisho_requests";
/// Time from the request head to the response head, by route and upstream.
pub(crate) const REQUEST_DURATION: &str = "sekisho_request_duration_seconds";
/// Requests between their head and the last byte of their response.
pub(crate) const REQUESTS_IN_FLIGHT: &str = "sekisho_requests_in_flight";
/// Client connections open now.
pub(crate) const CONNECTIONS_OPEN: &str = "sekisho_connections_open";
/// Client connections accepted.
pub(crate) const CONNECTIONS: &str = "sekisho_connections";
/// Client connections served, by worker (`worker_model = "per_worker"`).
pub(crate) const WORKER_CONNECTIONS: &str = "sekisho_worker_connections";
/// Each worker's event loop delay, smoothed (with more than one loop).
pub(crate) const WORKER_LOOP_DELAY: &str = "sekisho_worker_event_loop_delay_seconds";
/// Each worker's event loop busy share, smoothed (with more than one loop).
pub(crate) const WORKER_LOOP_BUSY: &str = "sekisho_worker_event_loop_busy_ratio";
/// Connections closed because a request head took too long (slowloris).
pub(crate) const HEADER_READ_TIMEOUTS: &str = "sekisho_header_read_timeouts";
/// Failed connection attempts to targets, by upstream.
pub(crate) const UPSTREAM_CONNECT_ERRORS: &str = "sekisho_upstream_connect_errors";
/// Config reloads, by result.
pub(crate) const CONFIG_RELOADS: &str = "sekisho_config_reloads";
/// Unix time of the config now in force.
pub(crate) const CONFIG_LOADED_TIMESTAMP: &str = "sekisho_config_loaded_timestamp_seconds";
/// Active health checks, by upstream and result.
pub(crate) const HEALTH_CHECKS: &str = "sekisho_health_checks";
/// Retries made, by route and what failed (connect_error, timeout, status).
pub(crate) const RETRIES: &str = "sekisho_retries";
/// Retries refused because the route's retry budget was spent, by route.
pub(crate) const RETRY_BUDGET_EXHAUSTED: &str = "sekisho_retry_budget_exhausted";
/// Answers by a route's fallback, by route and kind (upstream or static).
pub(crate) const FALLBACKS: &str = "sekisho_fallbacks";
/// Per target (upstream, target): 1 while passing the active checks.
pub(crate) const TARGET_HEALTHY: &str = "sekisho_upstream_target_healthy";
/// Per target: 1 while it may take requests (healthy, not ejected, in the active group).
pub(crate) const TARGET_ELIGIBLE: &str = "sekisho_upstream_target_eligible";
/// Per target: 1 while ejected by outlier detection.
pub(crate) const TARGET_EJECTED: &str = "sekisho_upstream_target_ejected";
/// Per target: requests in flight.
pub(crate) const TARGET_IN_FLIGHT: &str = "sekisho_upstream_target_in_flight";
/// Per target: peak-EWMA latency estimate.
pub(crate) const TARGET_LATENCY: &str = "sekisho_upstream_target_latency_seconds";
/// Per target: times a balancer picked it.
pub(crate) const TARGET_PICKS: &str = "sekisho_upstream_target_picks";
/// Per target: times it was ejected.
pub(crate) const TARGET_EJECTIONS: &str = "sekisho_upstream_target_ejections";
/// Per upstream circuit: 1 for the state it is in (label `state`), 0 for the others.
pub(crate) const CIRCUIT_STATE: &str = "sekisho_circuit_state";
/// Per upstream circuit: times it opened.
pub(crate) const CIRCUIT_OPENED: &str = "sekisho_circuit_opened";
/// Per upstream circuit: calls in its window.
pub(crate) const CIRCUIT_CALLS: &str = "sekisho_circuit_window_calls";
/// Per upstream circuit: failure rate of its window.
pub(crate) const CIRCUIT_FAILURE_RATE: &str = "sekisho_circuit_failure_rate";
/// Per upstream bulkhead: slots in use.
pub(crate) const BULKHEAD_IN_USE: &str = "sekisho_bulkhead_in_use";
/// Per upstream bulkhead: requests waiting for a slot.
pub(crate) const BULKHEAD_QUEUED: &str = "sekisho_bulkhead_queued";
/// Per upstream bulkhead: requests refused with BULKHEAD_FULL.
pub(crate) const BULKHEAD_REJECTED: &str = "sekisho_bulkhead_rejected";
/// Rate-limit decisions, by route (`*`: the server-wide limit) and result.
pub(crate) const RATE_LIMIT_DECISIONS: &str = "sekisho_rate_limit_decisions";
/// Rate-limit decisions Redis could not make, by route.
pub(crate) const RATE_LIMIT_STORE_ERRORS: &str = "sekisho_rate_limit_store_errors";
pub(crate) const RATE_LIMIT_KNOWN_OVER: &str = "sekisho_rate_limit_known_over";
/// Seconds per Redis rate-limit decision, by route.
pub(crate) const RATE_LIMIT_STORE_SECONDS: &str = "sekisho_rate_limit_store_seconds";
/// Cache lookups of cached routes, by route and result.
pub(crate) const CACHE_LOOKUPS: &str = "sekisho_cache_lookups";
/// Per route with adaptive concurrency: the current limit.
pub(crate) const CONCURRENCY_LIMIT: &str = "sekisho_adaptive_concurrency_limit";
/// Per route with adaptive concurrency: calls holding a place under the limit.
pub(crate) const CONCURRENCY_IN_FLIGHT: &str = "sekisho_adaptive_concurrency_in_flight";
/// Per route with adaptive concurrency: calls shed with OVERLOADED.
pub(crate) const SHED: &str = "sekisho_shed";
/// The event loop's own scheduling delay, smoothed (while it is probed).
pub(crate) const EVENT_LOOP_DELAY: &str = "sekisho_event_loop_delay_seconds";
/// The runtime workers' busy share, smoothed (while the loop is probed).
pub(crate) const EVENT_LOOP_BUSY: &str = "sekisho_event_loop_busy_ratio";
/// Requests refused because the gateway itself was overloaded (`[server.overload]`).
pub(crate) const OVERLOAD_REFUSED: &str = "sekisho_overload_refused";
/// Refusals decided from the request's head alone, before a request was built.
pub(crate) const REFUSED_FROM_HEAD: &str = "sekisho_refused_from_head";
/// Auth operations (login, refresh, logout, me, validate), by status and error type.
pub(crate) const AUTH_REQUESTS: &str = "sekisho_auth_requests";
/// Seconds per auth operation, by operation.
pub(crate) const AUTH_DURATION: &str = "sekisho_auth_duration_seconds";
/// Edge authentication's database writes dropped because their queue was full.
pub(crate) const AUTH_BACKGROUND_DROPPED: &str = "sekisho_auth_background_dropped";
/// Live sessions, as last counted (every 10 s).
pub(crate) const ACTIVE_SESSIONS: &str = "sekisho_active_sessions";
/// Identity cache look-ups by tier (l1, l2), cache (session, user_basic,
/// user_permissions, role_definitions, session_data) and result (hit, miss).
pub(crate) const AUTH_CACHE_OPERATIONS: &str = "sekisho_auth_cache_operations";
