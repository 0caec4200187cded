//! `report.html`: one self-contained page (inline CSS and SVG, no script, nothing fetched), and
//! the same charts as standalone SVG files for a README.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::svg::{escape, line_chart, Chart, Series};
use super::{counts, Report};

/// The report's charts: a file stem for each and the chart.
pub(super) fn charts(report: &Report) -> Vec<(String, Chart<'_>)> {
    let length = report
        .endpoints
        .iter()
        .map(|e| e.timeline.len())
        .max()
        .unwrap_or(0);
    let x_max = (length as f64).max(report.duration_s);
    let mut charts = Vec::new();
    // Latency per endpoint, by the second each request was due, on a log scale (1 ms and 5 s
    // side by side).
    for (index, endpoint) in report.endpoints.iter().enumerate() {
        let line = |name: &str, pick: fn(&super::Point) -> Option<f64>| Series {
            name: name.to_owned(),
            points: endpoint
                .timeline
                .iter()
                .map(|p| (p.t as f64 + 0.5, pick(p)))
                .collect(),
            dashed: false,
        };
        charts.push((
            format!("latency-{}", index + 1),
            Chart {
                title: format!("Latency: {}", endpoint.name),
                y_label: "ms (log)",
                log: true,
                x_max,
                series: vec![
                    line("p50", |p| p.p50_ms),
                    line("p95", |p| p.p95_ms),
                    line("p99", |p| p.p99_ms),
                    line("max", |p| p.max_ms),
                ],
                markers: &report.markers,
            },
        ));
    }
    // Throughput: answers per second per endpoint, and the arrivals asked for.
    let mut throughput: Vec<Series> = report
        .endpoints
        .iter()
        .map(|endpoint| Series {
            name: format!("{} answered", endpoint.name),
            points: endpoint
                .timeline
                .iter()
                .map(|p| (p.t as f64 + 0.5, Some(p.completed as f64)))
                .collect(),
            dashed: false,
        })
        .collect();
    let mut due = vec![0u64; length];
    for endpoint in &report.endpoints {
        for point in &endpoint.timeline {
            if let Some(slot) = due.get_mut(point.t as usize) {
                *slot += point.scheduled;
            }
        }
    }
    throughput.push(Series {
        name: "due (all)".to_owned(),
        points: due
            .iter()
            .enumerate()
            .map(|(t, count)| (t as f64 + 0.5, Some(*count as f64)))
            .collect(),
        dashed: true,
    });
    charts.push((
        "throughput".to_owned(),
        Chart {
            title: "Throughput".to_owned(),
            y_label: "requests/s",
            log: false,
            x_max,
            series: throughput,
            markers: &report.markers,
        },
    ));
    // Errors by kind, per endpoint, by the second the request was due.
    let mut errors: BTreeMap<String, Vec<(f64, Option<f64>)>> = BTreeMap::new();
    for endpoint in &report.endpoints {
        let mut kinds: Vec<&String> = endpoint.errors_by_kind.keys().collect();
        kinds.dedup();
        for kind in kinds {
            let name = if report.endpoints.len() > 1 {
                format!("{}: {kind}", endpoint.name)
            } else {
                kind.clone()
            };
            errors.insert(
                name,
                endpoint
                    .timeline
                    .iter()
                    .map(|p| {
                        (
                            p.t as f64 + 0.5,
                            Some(p.errors.get(kind).copied().unwrap_or(0) as f64),
                        )
                    })
                    .collect(),
            );
        }
    }
    charts.push((
        "errors".to_owned(),
        Chart {
            title: if errors.is_empty() {
                "Errors by kind: none".to_owned()
            } else {
                "Errors by kind".to_owned()
            },
            y_label: "errors/s",
            log: false,
            x_max,
            series: errors
                .into_iter()
                .map(|(name, points)| Series {
                    name,
                    points,
                    dashed: false,
                })
                .collect(),
            markers: &report.markers,
        },
    ));
    charts
}

fn row(out: &mut String, cells: &[String]) {
    out.push_str("<tr>");
    for cell in cells {
        let _ = write!(out, "<td>{}</td>", escape(cell));
    }
    out.push_str("</tr>");
}

fn head(out: &mut String, cells: &[&str]) {
    out.push_str("<tr>");
    for cell in cells {
        let _ = write!(out, "<th>{}</th>", escape(cell));
    }
    out.push_str("</tr>");
}

fn ms(value: f64) -> String {
    format!("{value:.1}")
}

fn percent(value: f64) -> String {
    format!("{:.3} %", value * 100.0)
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:960px}\
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ddd;padding:3px 8px;\
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}\
.verdict{display:inline-block;padding:4px 12px;color:#fff;font-weight:bold;border-radius:4px}\
.pass{background:#2a7d2a}.fail{background:#b52a2a}svg{margin:8px 0;max-width:100%;height:auto}\
code{background:#f4f4f4;padding:1px 4px}";

/// The page for `report`.
pub(super) fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>sekisho load: {} — {}</title><style>{STYLE}</style></head><body>",
        escape(&report.scenario),
        if report.pass { "PASS" } else { "FAIL" }
    );
    let _ = write!(
        out,
        "<h1>sekisho load: {}</h1><p><span class=\"verdict {}\">{}</span> against <code>{}</code>, {} model, {}, {:.0} s{}</p>",
        escape(&report.scenario),
        if report.pass { "pass" } else { "fail" },
        if report.pass { "PASS" } else { "FAIL" },
        escape(&report.target),
        escape(&report.model),
        escape(&report.http),
        report.duration_s,
        if report.stopped_early { " (stopped early)" } else { "" }
    );

    out.push_str("<h2>Criteria</h2><table>");
    head(&mut out, &["check", "value", "result"]);
    for check in &report.checks {
        row(
            &mut out,
            &[
                check.name.clone(),
                format!("{:.4}", check.value),
                if check.pass { "pass" } else { "FAIL" }.to_owned(),
            ],
        );
    }
    out.push_str("</table>");

    out.push_str("<h2>Summary</h2><table>");
    head(&mut out, &["figure", "value"]);
    let mut figures = vec![
        ("requests (judged)", report.requests.to_string()),
        (
            "asked",
            match (report.asked_rps, report.users) {
                (Some(rate), _) => format!("{rate} req/s"),
                (None, Some(users)) => format!("{users} users"),
                (None, None) => "-".to_owned(),
            },
        ),
        ("sent", format!("{:.1} req/s", report.sent_rps)),
        ("answered", format!("{:.1} req/s", report.rps)),
        ("p50 / p95 / p99 / max", {
            let l = &report.latency;
            format!(
                "{} / {} / {} / {} ms",
                ms(l.p50_ms),
                ms(l.p95_ms),
                ms(l.p99_ms),
                ms(l.max_ms)
            )
        }),
        (
            "errors",
            format!("{} ({})", report.errors, percent(report.error_rate)),
        ),
        (
            "timeouts",
            format!("{} ({})", report.timeouts, percent(report.timeout_rate)),
        ),
        (
            "unsent (over the in-flight bound)",
            report.unsent.to_string(),
        ),
        ("statuses", counts(&report.statuses)),
        ("errors by kind", counts(&report.errors_by_kind)),
    ];
    if let Some(rate) = report.cache_hit_rate {
        figures.push(("gateway cache hit rate", percent(rate)));
    }
    if let Some(gateway) = &report.gateway {
        if let Some(cpu) = gateway.cpu_cores {
            figures.push(("gateway CPU", format!("{:.0} % of a core", cpu * 100.0)));
        }
        if let Some(memory) = gateway.memory_mib {
            figures.push(("gateway memory", format!("{memory:.0} MiB")));
        }
    }
    if let Some(auth) = &report.auth {
        for (name, value) in [
            ("login success", auth.login_success_rate),
            ("refresh success", auth.refresh_success_rate),
            (
                "wrong passwords rejected",
                auth.wrong_password_rejected_rate,
            ),
        ] {
            if let Some(value) = value {
                figures.push((name, percent(value)));
            }
        }
    }
    for (name, value) in figures {
        row(&mut out, &[name.to_owned(), value]);
    }
    out.push_str("</table>");

    out.push_str("<h2>Endpoints</h2><table>");
    head(
        &mut out,
        &[
            "endpoint",
            "judged",
            "requests",
            "answered/s",
            "success",
            "p50",
            "p95",
            "p99",
            "max",
            "statuses",
        ],
    );
    for endpoint in &report.endpoints {
        let l = &endpoint.latency;
        row(
            &mut out,
            &[
                endpoint.name.clone(),
                if endpoint.judged { "yes" } else { "no" }.to_owned(),
                endpoint.requests.to_string(),
                format!("{:.1}", endpoint.rps),
                percent(endpoint.success_rate),
                ms(l.p50_ms),
                ms(l.p95_ms),
                ms(l.p99_ms),
                ms(l.max_ms),
                counts(&endpoint.statuses),
            ],
        );
    }
    out.push_str("</table><p>Latency in milliseconds from each request's intended send time.</p>");

    if let Some(cascade) = &report.cascade {
        let seconds =
            |value: Option<f64>| value.map_or("never".to_owned(), |v| format!("{v:.2} s"));
        out.push_str("<h2>Cascade</h2><table>");
        head(&mut out, &["figure", "value"]);
        for (name, value) in [
            (
                "slowdown",
                format!(
                    "{}: {} ms → {} ms",
                    cascade.slow_endpoint, cascade.base_latency_ms, cascade.chaos_latency_ms
                ),
            ),
            ("chaos started", seconds(cascade.chaos_started_s)),
            ("chaos lifted", seconds(cascade.chaos_ended_s)),
            (
                "time to contain",
                format!(
                    "{} ({})",
                    seconds(cascade.time_to_contain_s),
                    cascade.contained_by.as_deref().unwrap_or("-")
                ),
            ),
            (
                "circuit opened (metrics)",
                seconds(cascade.circuit_opened_s),
            ),
            (
                "circuit closed (metrics)",
                seconds(cascade.circuit_closed_s),
            ),
            ("time to recover", seconds(cascade.time_to_recover_s)),
        ] {
            row(&mut out, &[name.to_owned(), value]);
        }
        out.push_str("</table><table>");
        head(
            &mut out,
            &[
                "phase", "endpoint", "ok/s", "requests", "p50", "p99", "max", "errors",
            ],
        );
        for phase in &cascade.phases {
            row(
                &mut out,
                &[
                    phase.phase.clone(),
                    phase.endpoint.clone(),
                    format!("{:.1}", phase.succeeded_per_s),
                    phase.requests.to_string(),
                    ms(phase.p50_ms),
                    ms(phase.p99_ms),
                    ms(phase.max_ms),
                    counts(&phase.errors),
                ],
            );
        }
        out.push_str("</table>");
        for problem in &cascade.problems {
            let _ = write!(out, "<p>Problem: {}</p>", escape(problem));
        }
    }

    out.push_str("<h2>Over time</h2>");
    for (_, chart) in charts(report) {
        out.push_str(&line_chart(&chart));
    }
    if !report.markers.is_empty() {
        out.push_str("<h2>Events</h2><table>");
        head(&mut out, &["#", "at", "event"]);
        for (index, marker) in report.markers.iter().enumerate() {
            row(
                &mut out,
                &[
                    (index + 1).to_string(),
                    format!("{:.2} s", marker.at_s),
                    marker.label.clone(),
                ],
            );
        }
        out.push_str("</table>");
    }
    out.push_str("<p>Written by <code>sekisho load</code>; the figures are in <code>report.json</code> beside this page.</p></body></html>\n");
    out
}
