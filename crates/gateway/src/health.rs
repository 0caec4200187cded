//! Active health checks: one task per checked target, probing it every `interval` (plus
//! jitter) with an HTTP GET or a TCP connect.
//!
//! A target turns unhealthy after `unhealthy_threshold` failed checks in a row and healthy again
//! after `healthy_threshold` passed ones; a passing check also ends an outlier ejection early.
//! The checks belong to the gateway, not to a config generation: after every reload the
//! [`Supervisor`] starts checks for new targets, restarts those whose settings changed and stops
//! those of removed targets, leaving the others (and their streaks) untouched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sekisho_config::{HealthCheck, HealthCheckKind, UpstreamProtocol};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::sync::lock;
use crate::upstream::{CheckRecord, TargetState, UpstreamState};

type CheckClient = Client<HttpConnector, Empty<Bytes>>;

/// Runs the active checks of every upstream that has them.
#[derive(Debug, Default)]
pub(crate) struct Supervisor {
    running: std::sync::Mutex<HashMap<(String, String), Running>>,
}

#[derive(Debug)]
struct Running {
    /// The settings it runs with; a change restarts it.
    fingerprint: String,
    task: AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Supervisor {
    /// Brings the running checks in line with `runtime`. Needs a Tokio runtime; without one
    /// (a gateway built but not serving) it does nothing.
    pub(crate) fn reconcile(&self, runtime: &Runtime, metrics: &Arc<Metrics>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut running = lock(&self.running);
        let mut wanted = HashMap::new();
        for group in runtime.upstreams.values() {
            let Some(upstream) = runtime
                .config
                .upstreams
                .iter()
                .find(|(name, _)| name.get_ref().as_str() == &*group.name)
                .map(|(_, upstream)| upstream)
            else {
                continue;
            };
            let Some(check) = &upstream.health_check else {
                continue;
            };
            for target in &group.targets {
                let key = (group.name.to_string(), target.address.to_string());
                let fingerprint = format!(
                    "{check:?}/{:?}/{:?}",
                    upstream.protocol,
                    upstream.outlier.as_ref().map(|o| o.uneject_on_health_check)
                );
                let keep = running
                    .get(&key)
                    .is_some_and(|r| r.fingerprint == fingerprint);
                if !keep {
                    let uneject = upstream
                        .outlier
                        .as_ref()
                        .is_none_or(|o| o.uneject_on_health_check);
                    let probe = Probe {
                        uneject,
                        upstream: Arc::clone(group.state()),
                        target: Arc::clone(&target.state),
                        address: target.address.to_string(),
                        check: check.clone(),
                        protocol: upstream.protocol,
                        clock: group.clock(),
                        metrics: Arc::clone(metrics),
                    };
                    let task = handle.spawn(probe.run()).abort_handle();
                    running.insert(key.clone(), Running { fingerprint, task });
                }
                wanted.insert(key, ());
            }
        }
        running.retain(|key, _| wanted.contains_key(key));
    }

    /// Stops every check.
    pub(crate) fn stop(&self) {
        lock(&self.running).clear();
    }
}

/// The checks of one target.
struct Probe {
    /// A passing check ends an outlier ejection.
    uneject: bool,
    upstream: Arc<UpstreamState>,
    target: Arc<TargetState>,
    address: String,
    check: HealthCheck,
    protocol: UpstreamProtocol,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Probe {
    async fn run(self) {
        let client = self.client();
        let interval = self.check.interval.get();
        let jitter = interval.mul_f64(self.check.jitter.0);
        let unhealthy_after = self.check.unhealthy_threshold.0;
        let healthy_after = self.check.healthy_threshold.0;
        let (mut passes, mut failures) = (0u32, 0u32);
        // The first check comes soon, spread over a short while so that targets are not probed
        // in lockstep.
        tokio::time::sleep(random_upto(jitter.min(Duration::from_secs(1)))).await;
        loop {
            let started = Instant::now();
            let (ok, detail) = self.check_once(client.as_ref()).await;
            let duration = started.elapsed();
            self.metrics.health_check(self.upstream.name(), ok);
            self.target.set_last_check(CheckRecord {
                at_unix_ms: crate::clock::unix_ms(SystemTime::now()),
                ok,
                detail: detail.clone(),
                duration_ms: duration.as_secs_f64() * 1000.0,
            });
            let now = self.clock.millis(Instant::now());
            if ok {
                passes += 1;
                failures = 0;
                if self.uneject && self.target.uneject(&self.upstream, now) {
                    tracing::info!(upstream = %self.upstream.name(), target = %self.address, "health check passed; ejection ended");
                }
                if passes >= healthy_after && self.target.set_health(&self.upstream, true, now) {
                    tracing::info!(upstream = %self.upstream.name(), target = %self.address, passes, "target healthy");
                }
            } else {
                failures += 1;
                passes = 0;
                if failures >= unhealthy_after && self.target.set_health(&self.upstream, false, now)
                {
                    tracing::warn!(upstream = %self.upstream.name(), target = %self.address, failures, %detail, "target unhealthy");
                }
            }
            tokio::time::sleep(interval + random_upto(jitter)).await;
        }
    }

    fn client(&self) -> Option<CheckClient> {
        if self.check.kind == HealthCheckKind::Tcp {
            return None;
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.check.timeout.get()));
        let mut builder = Client::builder(TokioExecutor::new());
        // A fresh connection per check: the check proves a new connection can be made.
        builder.pool_max_idle_per_host(0);
        if self.protocol == UpstreamProtocol::H2c {
            builder.http2_only(true);
        }
        Some(builder.build(connector))
    }

    /// One check: whether it passed, and what it saw.
    async fn check_once(&self, client: Option<&CheckClient>) -> (bool, String) {
        let timeout = self.check.timeout.get();
        match client {
            None => match tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect(self.address.as_str()),
            )
            .await
            {
                Ok(Ok(_)) => (true, "connected".to_owned()),
                Ok(Err(error)) => (false, format!("connect failed: {error}")),
                Err(_) => (false, format!("no connection within {timeout:?}")),
            },
            Some(client) => {
                let request =
                    http::Request::get(format!("http://{}{}", self.address, self.check.path))
                        .header(http::header::HOST, self.address.as_str())
                        .header(http::header::USER_AGENT, "sekisho-health-check")
                        .body(Empty::new());
                let request = match request {
                    Ok(request) => request,
                    Err(error) => return (false, format!("bad check request: {error}")),
                };
                match tokio::time::timeout(timeout, client.request(request)).await {
                    Ok(Ok(response)) => {
                        let status = response.status().as_u16();
                        let ok = match &self.check.expected_statuses {
                            Some(expected) => expected.iter().any(|s| s.0 == status),
                            None => (200..400).contains(&status),
                        };
                        (ok, format!("status {status}"))
                    }
                    Ok(Err(error)) => (false, describe(&error)),
                    Err(_) => (false, format!("no answer within {timeout:?}")),
                }
            }
        }
    }
}

fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn random_upto(limit: Duration) -> Duration {
    if limit.is_zero() {
        return Duration::ZERO;
    }
    limit.mul_f64(fastrand::f64())
}
