//! The cascade: a chaos upstream behind the gateway answers in 100 ms, is slowed to 5 s for the
//! middle third of the run, then recovers; traffic arrives at a fixed rate on the slow route
//! and on the other routes alike.
//!
//! What it measures: whether the other routes stay fast (they are the judged endpoints: their
//! p95, p99 and error rate against the criteria, over the whole run), and how long the gateway
//! takes to contain the slow one — the first answer on the slow route that carries a
//! containment code (`CIRCUIT_OPEN`, `BULKHEAD_FULL`, `OVERLOADED`), or the moment the
//! gateway's `/metrics` shows a circuit open, whichever comes first — and to let it back in.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Uri};
use tokio::time::Instant;

use super::metrics::{circuits, Gauge, Scraper};
use super::{join, ScenarioOptions};
use crate::generator::recorder::SecondFigures;
use crate::generator::{parse_url, Endpoint, Generator, HttpVersion, LoadClient, MarkHandle};
use crate::report::{CascadeFindings, Check, Latency, Marker, PhaseFigures, Report};
use crate::LoadError;

/// Answers by which the gateway fails the slow route fast instead of waiting on it.
const CONTAINMENT_CODES: [&str; 3] = ["CIRCUIT_OPEN", "BULKHEAD_FULL", "OVERLOADED"];

/// The chaos upstream's control endpoint, from its base URL or its `/_chaos` URL.
fn chaos_uri(url: &str) -> Result<Uri, LoadError> {
    let uri = parse_url(url)?;
    if uri.path() == "/_chaos" {
        return Ok(uri);
    }
    if uri.path() != "/" {
        return Err(LoadError::BadUrl {
            url: url.to_owned(),
            why: "give the chaos upstream's base URL (http://host:port) or its /_chaos URL"
                .to_owned(),
        });
    }
    parse_url(&join(url, "/_chaos"))
}

/// Talks to the chaos upstream's `/_chaos`.
#[derive(Debug, Clone)]
struct Chaos {
    client: LoadClient,
    uri: Uri,
}

impl Chaos {
    async fn call(
        &self,
        method: Method,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let (status, answer) = self.client.fetch(method, self.uri.clone(), body).await?;
        if status != 200 {
            return Err(format!(
                "{} answered {status}: {}",
                self.uri,
                String::from_utf8_lossy(&answer)
            ));
        }
        serde_json::from_slice(&answer).map_err(|e| format!("{}: not JSON ({e})", self.uri))
    }

    async fn latency(&self, latency: Duration) -> Result<(), String> {
        let millis = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.call(Method::POST, serde_json::json!({ "latency_ms": millis }))
            .await
            .map(|_| ())
    }
}

/// What happened beside the load, on the run's clock.
#[derive(Debug, Default)]
struct Events {
    chaos_started: Option<Duration>,
    chaos_ended: Option<Duration>,
    circuit_opened: Option<Duration>,
    circuit_closed: Option<Duration>,
    /// Each change of the circuits' state seen after the slowdown began.
    transitions: Vec<(Duration, &'static str)>,
    problems: Vec<String>,
}

/// Slows the chaos upstream at `slow_at`, lets it recover at `recover_at`, and watches the
/// gateway's circuits every 200 ms when it can, until `done`.
async fn drive(
    chaos: Chaos,
    scraper: Option<Scraper>,
    mark: MarkHandle,
    start: Instant,
    (slow_at, recover_at): (Duration, Duration),
    (base, slow): (Duration, Duration),
    mut done: tokio::sync::watch::Receiver<bool>,
) -> Events {
    let mut events = Events::default();
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_change = if events.chaos_started.is_none() {
            Some(start + slow_at)
        } else if events.chaos_ended.is_none() {
            Some(start + recover_at)
        } else {
            None
        };
        let change = async {
            match next_change {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = change => {
                let slowing = events.chaos_started.is_none();
                let (latency, slot) = if slowing {
                    (slow, &mut events.chaos_started)
                } else {
                    (base, &mut events.chaos_ended)
                };
                // The moment is taken before the call: the chaos applies to requests the
                // upstream receives from then on.
                let at = start.elapsed();
                if slowing {
                    mark.mark_now();
                }
                match chaos.latency(latency).await {
                    Ok(()) => *slot = Some(at),
                    Err(why) => {
                        events.problems.push(format!("setting the latency to {latency:?}: {why}"));
                        // Give up on this change, but keep the schedule going.
                        *slot = Some(Duration::MAX);
                    }
                }
            }
            _ = ticks.tick(), if scraper.is_some() => {
                let Some(scraper) = &scraper else { continue };
                match scraper.scrape().await {
                    Ok(samples) => {
                        let state = circuits(&samples);
                        let at = start.elapsed();
                        let last = events.transitions.last().map_or("closed", |(_, s)| *s);
                        // Transitions count from the slowdown on (bounded, for the plot).
                        if events.chaos_started.is_some() && state != last && events.transitions.len() < 50 {
                            events.transitions.push((at, state));
                        }
                        if state == "open" && events.circuit_opened.is_none() && events.chaos_started.is_some() {
                            events.circuit_opened = Some(at);
                        }
                        if state == "closed" && events.circuit_opened.is_some() && events.circuit_closed.is_none() {
                            events.circuit_closed = Some(at);
                        }
                    }
                    Err(why) => {
                        if events.problems.len() < 10 {
                            events.problems.push(format!("scraping metrics: {why}"));
                        }
                    }
                }
            }
            _ = done.changed() => break,
        }
    }
    for slot in [&mut events.chaos_started, &mut events.chaos_ended] {
        if *slot == Some(Duration::MAX) {
            *slot = None;
        }
    }
    events
}

/// The phase figures of `endpoint` over the seconds `from..to`.
fn phase(
    name: &str,
    endpoint: (usize, &str),
    timeline: &[Vec<SecondFigures>],
    (from, to): (usize, usize),
) -> Option<PhaseFigures> {
    let seconds = timeline.get(from..to.min(timeline.len()))?;
    if seconds.is_empty() {
        return None;
    }
    let mut latency: Option<Histogram<u64>> = None;
    let (mut requests, mut succeeded) = (0, 0);
    let mut errors = std::collections::BTreeMap::new();
    for row in seconds {
        let Some(figures) = row.get(endpoint.0) else {
            continue;
        };
        requests += figures.scheduled;
        succeeded += figures.succeeded;
        for (kind, count) in &figures.errors_by_kind {
            *errors.entry(kind.clone()).or_insert(0) += count;
        }
        match &mut latency {
            Some(total) => {
                let _ = total.add(&figures.latency);
            }
            None => latency = Some(figures.latency.clone()),
        }
    }
    let latency = latency.as_ref().map(Latency::of).unwrap_or_default();
    Some(PhaseFigures {
        phase: name.to_owned(),
        endpoint: endpoint.1.to_owned(),
        succeeded_per_s: succeeded as f64 / seconds.len() as f64,
        requests,
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        max_ms: latency.max_ms,
        errors,
    })
}

pub(super) async fn run(
    options: &ScenarioOptions,
    stop: impl Future<Output = ()>,
) -> Result<Report, LoadError> {
    let Some(chaos_url) = &options.chaos else {
        return Err(LoadError::BadPlan(
            "the cascade scenario needs --chaos URL: the chaos upstream behind the slow route"
                .to_owned(),
        ));
    };
    if options.duration < Duration::from_secs(3) {
        return Err(LoadError::BadPlan(format!(
            "the cascade runs in three phases of whole seconds: --duration must be at least 3s, not {:?}",
            options.duration
        )));
    }
    let chaos = Chaos {
        client: LoadClient::new(HttpVersion::Http1, Duration::from_secs(5), None),
        uri: chaos_uri(chaos_url)?,
    };
    let chaos_error = |why: String| LoadError::Chaos {
        url: chaos.uri.to_string(),
        why,
    };
    // What was in force, put back after the run.
    let saved = chaos
        .call(Method::GET, serde_json::Value::Null)
        .await
        .map_err(chaos_error)?;
    chaos
        .latency(options.base_latency)
        .await
        .map_err(chaos_error)?;

    let mut endpoints = Vec::new();
    for path in &options.paths {
        endpoints.push(Endpoint::get(&join(&options.target, path))?);
    }
    let slow = Endpoint {
        judged: false,
        ..Endpoint::get(&join(&options.target, &options.slow_path))?
    };
    let slow_name = slow.name.clone();
    let slow_index = endpoints.len();
    endpoints.push(slow);
    let plan = options.plan(endpoints, 50.0)?;
    // The slowdown takes the middle third, on whole seconds so the phases are whole buckets.
    let third = (options.duration.as_secs() / 3).max(1);
    let (slow_at, recover_at) = (
        Duration::from_secs(third),
        Duration::from_secs((2 * third).max(third + 1)),
    );

    let gauge = Gauge::start(options).await?;
    let generator = Generator::new(plan.clone())?;
    let start = generator.start();
    let (done, watching) = tokio::sync::watch::channel(false);
    let driver = tokio::spawn(drive(
        chaos.clone(),
        gauge.as_ref().map(|g| g.scraper().clone()),
        generator.mark_handle(),
        start,
        (slow_at, recover_at),
        (options.base_latency, options.chaos_latency),
        watching,
    ));
    let output = generator.run(stop).await;
    done.send_replace(true);
    let events = driver.await.unwrap_or_default();
    // Put back what was in force (the requests count is not a setting).
    let mut restore = saved;
    if let Some(fields) = restore.as_object_mut() {
        fields.remove("requests");
    }
    let mut problems = events.problems;
    if let Err(why) = chaos.call(Method::POST, restore).await {
        problems.push(format!("restoring the chaos upstream: {why}"));
    }

    let mut report = Report::build(
        options.scenario.name(),
        &options.target,
        &plan,
        &output,
        options.criteria,
    );
    if let Some(gauge) = gauge {
        let figures = gauge.finish().await;
        report.cache_hit_rate = figures.cache_hit_rate;
        report.gateway = Some(figures);
    }

    let seconds = |at: Option<Duration>| at.map(|d| d.as_secs_f64());
    let chaos_started = seconds(events.chaos_started);
    let chaos_ended = seconds(events.chaos_ended);
    // The first containment answer after the slowdown began.
    let by_code = report.endpoints.get(slow_index).and_then(|endpoint| {
        CONTAINMENT_CODES
            .iter()
            .filter_map(|code| {
                endpoint
                    .first_code_after_mark_s
                    .get(*code)
                    .map(|at| (*at, *code))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    });
    let by_metrics = seconds(events.circuit_opened).map(|at| (at, "circuit open (metrics)"));
    let contained = [by_code, by_metrics]
        .into_iter()
        .flatten()
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let time_to_recover = chaos_ended.and_then(|ended| {
        let from = ended.ceil() as u64;
        report
            .endpoints
            .get(slow_index)?
            .timeline
            .iter()
            .find(|point| point.t >= from && point.succeeded > 0)
            .map(|point| (point.t as f64 - ended).max(0.0))
    });
    let bounds = [
        ("normal", 0, slow_at.as_secs() as usize),
        (
            "slow",
            slow_at.as_secs() as usize,
            recover_at.as_secs() as usize,
        ),
        (
            "recovered",
            recover_at.as_secs() as usize,
            options.duration.as_secs() as usize,
        ),
    ];
    let mut phases = Vec::new();
    for (index, endpoint) in plan.endpoints.iter().enumerate() {
        for (name, from, to) in bounds {
            phases.extend(phase(
                name,
                (index, &endpoint.name),
                &output.recorded.timeline,
                (from, to),
            ));
        }
    }

    let mut markers = Vec::new();
    if let Some(at) = chaos_started {
        markers.push(Marker {
            at_s: at,
            label: format!(
                "chaos: {} ms → {} ms",
                options.base_latency.as_millis(),
                options.chaos_latency.as_millis()
            ),
        });
    }
    if let Some((at, by)) = contained {
        markers.push(Marker {
            at_s: at,
            label: format!("contained: {by}"),
        });
    }
    for (at, state) in &events.transitions {
        markers.push(Marker {
            at_s: at.as_secs_f64(),
            label: format!("circuit {}", state.replace('_', "-")),
        });
    }
    if let Some(at) = chaos_ended {
        markers.push(Marker {
            at_s: at,
            label: "chaos lifted".to_owned(),
        });
    }
    markers.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    report.markers = markers;
    let slow_phase = (recover_at - slow_at).as_secs_f64();
    let time_to_contain = match (contained, chaos_started) {
        (Some((at, _)), Some(started)) => Some(at - started),
        _ => None,
    };
    let contain_check = Check {
        name: format!("time_to_contain_s < {slow_phase} (the slow phase)"),
        value: time_to_contain.unwrap_or(f64::INFINITY),
        pass: time_to_contain.is_some_and(|t| t < slow_phase),
    };
    report.cascade = Some(CascadeFindings {
        slow_endpoint: slow_name,
        base_latency_ms: u64::try_from(options.base_latency.as_millis()).unwrap_or(u64::MAX),
        chaos_latency_ms: u64::try_from(options.chaos_latency.as_millis()).unwrap_or(u64::MAX),
        chaos_started_s: chaos_started,
        chaos_ended_s: chaos_ended,
        time_to_contain_s: time_to_contain,
        contained_by: contained.map(|(_, by)| by.to_owned()),
        circuit_opened_s: seconds(events.circuit_opened),
        circuit_closed_s: seconds(events.circuit_closed),
        time_to_recover_s: time_to_recover,
        phases,
        problems,
    });
    report.judge(vec![contain_check]);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chaos_url_is_its_base_or_its_control_endpoint() {
        assert_eq!(
            chaos_uri("http://127.0.0.1:9003").expect("base").path(),
            "/_chaos"
        );
        assert_eq!(
            chaos_uri("http://127.0.0.1:9003/_chaos")
                .expect("control")
                .path(),
            "/_chaos"
        );
        assert!(chaos_uri("http://127.0.0.1:9003/api").is_err());
    }
}
