//! The dashboard's snapshot: once a second one task reads the gateway (its views and its metrics
//! exposition), turns counters into rates and percentiles over the last few seconds, decides each
//! upstream's colour, and publishes the result, already framed as a server-sent event, to every
//! viewer through one `watch` channel. Viewers never read the gateway themselves, so twenty open
//! pages cost what one does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::exposition::{add_buckets, quantile, Counters};
use super::reloads::ReloadLog;
use crate::clock::unix_ms;
use crate::AdminState;

/// How often the snapshot is taken.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);
/// Rates and percentiles cover about this long (the readings kept are this many periods).
const WINDOW_READINGS: usize = 5;
/// Points of history kept for a page that opens now: ten minutes at one a second.
pub(crate) const HISTORY_POINTS: usize = 600;

/// An error rate from which an upstream turns warning, and critical.
const ERROR_RATE_WARNING: f64 = 0.05;
const ERROR_RATE_CRITICAL: f64 = 0.5;

/// One reading of the counters, with the bulkheads' rejection counts next to it.
struct Reading {
    at: Instant,
    counters: Counters,
    bulkhead_rejected: BTreeMap<String, u64>,
}

/// What the sampler keeps between snapshots: the last few readings and the reloads seen.
pub(crate) struct Sampler {
    readings: VecDeque<Reading>,
    reloads: ReloadLog,
}

/// The published side: the latest snapshot event and the history a new viewer starts from.
pub(crate) struct Published {
    pub(crate) latest: watch::Receiver<Bytes>,
    sender: watch::Sender<Bytes>,
    history: Mutex<VecDeque<String>>,
}

impl Published {
    pub(crate) fn new() -> Self {
        let (sender, latest) = watch::channel(Bytes::new());
        Self {
            latest,
            sender,
            history: Mutex::new(VecDeque::with_capacity(HISTORY_POINTS)),
        }
    }

    /// The `history` event: every point kept, oldest first.
    pub(crate) fn history_event(&self) -> Bytes {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let mut data =
            String::with_capacity(history.iter().map(|p| p.len() + 1).sum::<usize>() + 2);
        data.push('[');
        for (index, point) in history.iter().enumerate() {
            if index > 0 {
                data.push(',');
            }
            data.push_str(point);
        }
        data.push(']');
        event("history", &data)
    }

    fn publish(&self, snapshot: &Value) {
        let point = snapshot["point"].to_string();
        {
            let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            if history.len() == HISTORY_POINTS {
                history.pop_front();
            }
            history.push_back(point);
        }
        self.sender
            .send_replace(event("snapshot", &snapshot.to_string()));
    }
}

/// A server-sent event; `data` must be one line (compact JSON is).
pub(crate) fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl Sampler {
    pub(crate) fn new() -> Self {
        Self {
            readings: VecDeque::with_capacity(WINDOW_READINGS + 1),
            reloads: ReloadLog::default(),
        }
    }

    /// Takes one snapshot and publishes it.
    pub(crate) fn tick(&mut self, state: &AdminState) {
        let snapshot = self.snapshot(state);
        state.dashboard.published.publish(&snapshot);
    }

    /// Reads the gateway once and builds the snapshot.
    pub(crate) fn snapshot(&mut self, state: &AdminState) -> Value {
        let gateway = &state.gateway;
        let now = Instant::now();
        let upstreams = gateway.upstreams();
        let circuits = gateway.circuits();
        let route_views: BTreeMap<String, sekisho_gateway::RouteView> = gateway
            .routes()
            .into_iter()
            .map(|route| (route.name.clone(), route))
            .collect();
        let reading = Reading {
            at: now,
            counters: Counters::parse(&gateway.encode_metrics()),
            bulkhead_rejected: upstreams
                .iter()
                .filter_map(|u| u.bulkhead.as_ref().map(|b| (u.name.clone(), b.rejected)))
                .collect(),
        };
        if self.readings.len() > WINDOW_READINGS {
            self.readings.pop_front();
        }
        self.readings.push_back(reading);
        let latest = self.readings.back();
        let earliest = self.readings.front();
        let (Some(latest), Some(earliest)) = (latest, earliest) else {
            return Value::Null;
        };
        let seconds = latest.at.duration_since(earliest.at).as_secs_f64();
        let per_second = |delta: f64| if seconds > 0.0 { delta / seconds } else { 0.0 };

        // Routes: their own figures; upstreams: the sum of the routes that send to them.
        let mut routes = Vec::new();
        let mut by_upstream: BTreeMap<String, Traffic> = BTreeMap::new();
        for ((route, upstream), now_counters) in &latest.counters.routes {
            if route.is_empty() {
                // Requests no route took (NO_ROUTE and the like): not a route's traffic.
                continue;
            }
            let before = earliest
                .counters
                .routes
                .get(&(route.clone(), upstream.clone()));
            let mut traffic = Traffic::default();
            traffic.add(now_counters, before);
            by_upstream
                .entry(upstream.clone())
                .or_default()
                .add(now_counters, before);
            let retries = per_second(
                latest.counters.retries.get(route).copied().unwrap_or(0.0)
                    - earliest.counters.retries.get(route).copied().unwrap_or(0.0),
            );
            let budget_exhausted = latest
                .counters
                .budget_exhausted
                .get(route)
                .copied()
                .unwrap_or(0.0);
            let (limit_allowed, limit_limited) = rate_delta(latest, earliest, route);
            let cache = cache_figures(latest, earliest, route);
            let mut figures = traffic.figures(&per_second);
            figures["name"] = json!(route);
            figures["upstream"] = json!(upstream);
            figures["retries_per_second"] = json!(round(retries));
            figures["retry_budget_exhausted"] = json!(budget_exhausted);
            figures["retry_budget"] = route_views
                .get(route)
                .and_then(|view| view.retry.as_ref())
                .map_or(Value::Null, |retry| json!(retry.budget));
            figures["rate_limit"] = match latest.counters.rate_limits.get(route) {
                Some(&(_, limited_total)) => json!({
                    "allowed_per_second": round(per_second(limit_allowed)),
                    "limited_per_second": round(per_second(limit_limited)),
                    "limited_total": limited_total,
                }),
                None => Value::Null,
            };
            figures["cache"] = cache;
            routes.push(figures);
        }

        let circuit_state: BTreeMap<&str, &str> = circuits
            .iter()
            .map(|c| (c.name.as_str(), c.state))
            .collect();
        let mut upstream_values = Vec::new();
        let mut point_upstreams = serde_json::Map::new();
        for upstream in &upstreams {
            let traffic = by_upstream.remove(&upstream.name).unwrap_or_default();
            let mut figures = traffic.figures(&per_second);
            let circuit = circuit_state.get(upstream.name.as_str()).copied();
            let rejected_recently = upstream.bulkhead.as_ref().is_some_and(|b| {
                b.rejected
                    > earliest
                        .bulkhead_rejected
                        .get(&upstream.name)
                        .copied()
                        .unwrap_or(b.rejected)
            });
            let (colour, reasons) = colour(upstream, circuit, &traffic, rejected_recently);
            point_upstreams.insert(upstream.name.clone(), traffic.point(&per_second));
            figures["name"] = json!(upstream.name);
            figures["state"] = json!(colour);
            figures["reasons"] = json!(reasons);
            figures["balance"] = json!(upstream.balance);
            figures["panic"] = json!(upstream.panic);
            figures["bulkhead"] = json!(upstream.bulkhead);
            figures["circuit"] = json!(circuit);
            figures["targets"] = json!(upstream.targets);
            upstream_values.push(figures);
        }
        let mut point_routes = serde_json::Map::new();
        for route in &routes {
            if let Some(name) = route["name"].as_str() {
                point_routes.insert(
                    name.to_owned(),
                    json!([
                        route["requests_per_second"],
                        route["error_rate"],
                        route["p50_ms"],
                        route["p95_ms"],
                        route["p99_ms"]
                    ]),
                );
            }
        }

        // The cache's hit rate over every cached route.
        let (mut hits, mut lookups) = (0.0, 0.0);
        for route in &routes {
            hits += route["cache"]["hits"].as_f64().unwrap_or(0.0);
            lookups += route["cache"]["lookups"].as_f64().unwrap_or(0.0);
        }
        let cache_hit_rate = (lookups > 0.0).then(|| round(hits / lookups));
        let cache = gateway.cache_stats(0).map(|(stats, _)| stats);

        let rate_limits: Vec<Value> = gateway
            .rate_limits()
            .into_iter()
            .map(|limit| {
                let (allowed, limited) = rate_delta(latest, earliest, &limit.scope);
                let limited_total = latest
                    .counters
                    .rate_limits
                    .get(&limit.scope)
                    .map_or(0.0, |&(_, limited)| limited);
                json!({
                    "scope": limit.scope,
                    "limit": limit.limit,
                    "backend": limit.backend,
                    "allowed_per_second": round(per_second(allowed)),
                    "limited_per_second": round(per_second(limited)),
                    "limited_total": limited_total,
                })
            })
            .collect();

        let status = gateway.status();
        self.reloads.observe(&status, latest.counters.reloads);
        let alerts = alerts(state);
        let store = gateway.store_status().map(|store| {
            json!({"healthy": store.healthy, "url": store.url, "instances": store.instances})
        });
        let overall = overall(
            status.ready,
            status.last_reload.error.is_some(),
            store.as_ref().is_some_and(|s| s["healthy"] != true),
            &upstream_values,
            &alerts,
        );
        let at_unix_ms = unix_ms(SystemTime::now());
        json!({
            "at_unix_ms": at_unix_ms,
            "status": overall,
            "ready": status.ready,
            "draining": status.draining,
            "generation": status.generation,
            "loaded_at_unix_ms": unix_ms(status.loaded_at),
            "last_reload": {
                "at_unix_ms": status.last_reload.at.map(unix_ms),
                "error": status.last_reload.error,
            },
            "reloads": {
                "ok": latest.counters.reloads.0,
                "error": latest.counters.reloads.1,
                "recent": self.reloads.recent,
            },
            "upstreams": upstream_values,
            "routes": routes,
            "circuits": circuits,
            "rate_limits": rate_limits,
            "cache": {"hit_rate": cache_hit_rate, "stats": cache},
            "store": store,
            "alerts": alerts,
            "viewers": state.dashboard.viewers(),
            "point": {
                "t": at_unix_ms,
                "u": point_upstreams,
                "r": point_routes,
                "c": cache_hit_rate,
            },
        })
    }
}

/// Requests, failures and latencies of one route, or summed over an upstream's routes, between
/// the earliest and the latest reading.
#[derive(Default)]
struct Traffic {
    requests: f64,
    errors: f64,
    later: Vec<(f64, f64)>,
    earlier: Vec<(f64, f64)>,
}

impl Traffic {
    fn add(
        &mut self,
        now: &super::exposition::RouteCounters,
        before: Option<&super::exposition::RouteCounters>,
    ) {
        self.requests += now.total() - before.map_or(0.0, |b| b.total());
        self.errors += now.by_class[4] - before.map_or(0.0, |b| b.by_class[4]);
        add_buckets(&mut self.later, &now.buckets);
        match before {
            Some(before) => add_buckets(&mut self.earlier, &before.buckets),
            None => add_buckets(
                &mut self.earlier,
                &now.buckets
                    .iter()
                    .map(|&(b, _)| (b, 0.0))
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn error_rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.errors / self.requests)
    }

    fn percentile_ms(&self, q: f64) -> Option<f64> {
        quantile(&self.later, &self.earlier, q).map(|seconds| round(seconds * 1000.0))
    }

    fn figures(&self, per_second: &dyn Fn(f64) -> f64) -> Value {
        json!({
            "requests_per_second": round(per_second(self.requests)),
            "error_rate": self.error_rate().map(round),
            "p50_ms": self.percentile_ms(0.5),
            "p95_ms": self.percentile_ms(0.95),
            "p99_ms": self.percentile_ms(0.99),
        })
    }

    /// The compact form kept in the history: [req/s, error rate, p50, p95, p99].
    fn point(&self, per_second: &dyn Fn(f64) -> f64) -> Value {
        json!([
            round(per_second(self.requests)),
            self.error_rate().map(round),
            self.percentile_ms(0.5),
            self.percentile_ms(0.95),
            self.percentile_ms(0.99),
        ])
    }
}

/// An upstream's colour and why: critical when its circuit rejects, no target can take a request,
/// or most requests fail; warning when something is off but it still serves.
fn colour(
    upstream: &sekisho_gateway::UpstreamView,
    circuit: Option<&str>,
    traffic: &Traffic,
    bulkhead_rejected_recently: bool,
) -> (&'static str, Vec<String>) {
    let mut critical = Vec::new();
    let mut warning = Vec::new();
    match circuit {
        Some(state @ ("open" | "forced_open")) => critical.push(format!("circuit {state}")),
        Some(state @ "half_open") => warning.push(format!("circuit {state}")),
        _ => {}
    }
    let usable = upstream
        .targets
        .iter()
        .filter(|t| t.health == "healthy")
        .count();
    if usable == 0 && !upstream.targets.is_empty() {
        critical.push("no healthy target".to_owned());
    } else if usable < upstream.targets.len() {
        warning.push(format!(
            "{usable}/{} targets healthy",
            upstream.targets.len()
        ));
    }
    if upstream.panic {
        warning.push("panic: spreading over every target".to_owned());
    }
    match traffic.error_rate() {
        Some(rate) if rate >= ERROR_RATE_CRITICAL => {
            critical.push(format!("{:.0} % errors", rate * 100.0));
        }
        Some(rate) if rate >= ERROR_RATE_WARNING => {
            warning.push(format!("{:.0} % errors", rate * 100.0));
        }
        _ => {}
    }
    if bulkhead_rejected_recently {
        warning.push("bulkhead rejecting".to_owned());
    }
    if !critical.is_empty() {
        critical.extend(warning);
        ("critical", critical)
    } else if !warning.is_empty() {
        ("warning", warning)
    } else {
        ("healthy", Vec::new())
    }
}

/// Allowed and limited decisions of the limit of `scope` between the two readings.
fn rate_delta(latest: &Reading, earliest: &Reading, scope: &str) -> (f64, f64) {
    let now = latest
        .counters
        .rate_limits
        .get(scope)
        .copied()
        .unwrap_or_default();
    let before = earliest
        .counters
        .rate_limits
        .get(scope)
        .copied()
        .unwrap_or_default();
    ((now.0 - before.0).max(0.0), (now.1 - before.1).max(0.0))
}

/// A cached route's hits and lookups between the two readings, and its hit rate; null when the
/// route does not cache.
fn cache_figures(latest: &Reading, earliest: &Reading, route: &str) -> Value {
    let Some(now) = latest.counters.cache.get(route) else {
        return Value::Null;
    };
    let empty = BTreeMap::new();
    let before = earliest.counters.cache.get(route).unwrap_or(&empty);
    let delta = |result: &str| {
        (now.get(result).copied().unwrap_or(0.0) - before.get(result).copied().unwrap_or(0.0))
            .max(0.0)
    };
    // Answered from the cache: fresh, stale while revalidating, stale on error, waited for a
    // leader's fill, revalidated (304 from the origin), or a kept 404.
    let hits: f64 = [
        "hit",
        "stale",
        "stale_if_error",
        "coalesced",
        "negative",
        "revalidated",
    ]
    .iter()
    .map(|r| delta(r))
    .sum();
    let lookups: f64 = now.keys().map(|r| delta(r)).sum();
    json!({
        "hits": hits,
        "lookups": lookups,
        "hit_rate": (lookups > 0.0).then(|| round(hits / lookups)),
    })
}

/// The active alerts, when alerting runs (null otherwise).
fn alerts(state: &AdminState) -> Value {
    let Some(shared) = state.alerts.get() else {
        return Value::Null;
    };
    let now = Instant::now();
    let active = shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .manager()
        .active_alerts(now);
    Value::Array(
        active
            .into_iter()
            .map(|a| {
                json!({
                    "name": a.labels.get("alertname").cloned().unwrap_or_default(),
                    "fingerprint": a.fingerprint,
                    "severity": a.severity.as_str(),
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "muted": a.muted,
                    "acknowledged": a.acknowledged,
                    "firing_for_seconds": a.firing_for.as_secs(),
                })
            })
            .collect(),
    )
}

/// The gateway's colour: critical when it does not serve, an upstream is critical or a critical
/// alert fires unacknowledged; warning for anything else that is off.
fn overall(
    ready: bool,
    reload_failed: bool,
    store_down: bool,
    upstreams: &[Value],
    alerts: &Value,
) -> &'static str {
    let alert_severities: Vec<&str> = alerts
        .as_array()
        .map(|alerts| {
            alerts
                .iter()
                .filter(|a| a["muted"] != true && a["acknowledged"] != true)
                .filter_map(|a| a["severity"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let upstream_is = |colour: &str| upstreams.iter().any(|u| u["state"] == colour);
    if !ready || upstream_is("critical") || alert_severities.contains(&"critical") {
        "critical"
    } else if reload_failed || store_down || upstream_is("warning") || !alert_severities.is_empty()
    {
        "warning"
    } else {
        "healthy"
    }
}

/// Three decimals are plenty on a dashboard, and keep the events short.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
