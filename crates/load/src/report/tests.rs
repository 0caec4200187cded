//! The report from a known record: percentiles, rates, errors by kind, the verdict.

use super::*;
use crate::generator::recorder::{Outcome, Recorder};
use crate::generator::{Endpoint, HttpVersion, Progress};
use tokio::time::Instant;

/// A run of 100 requests on one judged endpoint, due one every 10 ms, answered after
/// 1..=100 ms; the last `failures` of them failed as given.
fn report_of(failures: &[Outcome], criteria: Criteria) -> Report {
    let start = Instant::now();
    let recorder = Recorder::new(start, vec![(200, 399)], vec![true]).expect("recorder");
    for n in 0..100u64 {
        let intended = start + Duration::from_millis(n * 10);
        let outcome = match failures.get((99 - n) as usize) {
            Some(failure) => failure.clone(),
            None => Outcome::Answered {
                status: 200,
                code: None,
            },
        };
        let finished = intended + Duration::from_millis(n + 1);
        recorder.record(0, intended, intended, finished, &outcome);
    }
    let plan = LoadPlan {
        endpoints: vec![Endpoint::get("http://127.0.0.1:1/").expect("url")],
        model: Model::Open {
            rate: 100.0,
            max_outstanding: 10,
        },
        duration: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        http: HttpVersion::Http1,
        connections: 10,
        progress: Progress::Off,
        dispatch: crate::Dispatch::Shared,
    };
    let output = RunOutput {
        recorded: recorder.take(),
        dispatch_time: Duration::from_millis(990),
        wall_time: Duration::from_millis(1100),
        stopped_early: false,
    };
    let mut report = Report::build("get", "test", &plan, &output, criteria);
    report.judge(Vec::new());
    report
}

#[test]
fn percentiles_rates_and_the_verdict_come_from_the_record() {
    let report = report_of(&[], Criteria::default());
    assert_eq!(report.requests, 100);
    assert!((report.p50_ms - 50.0).abs() < 0.1, "{}", report.p50_ms);
    assert!((report.p99_ms - 99.0).abs() < 0.1, "{}", report.p99_ms);
    assert!((report.max_ms - 100.0).abs() < 0.1, "{}", report.max_ms);
    assert_eq!(report.rps, 100.0);
    assert_eq!(report.sent_rps, 100.0);
    assert!(report.pass, "{:?}", report.checks);
    assert_eq!(report.statuses.get("200"), Some(&100));
    // Due at 0..990 ms: one bucket of 100 requests, whose answers all came within it.
    assert_eq!(report.endpoints[0].timeline[0].scheduled, 100);
}

#[test]
fn errors_and_timeouts_fail_the_run_by_kind() {
    let failures = [
        Outcome::Answered {
            status: 503,
            code: Some("CIRCUIT_OPEN".to_owned()),
        },
        Outcome::Timeout,
    ];
    let report = report_of(&failures, Criteria::default());
    assert_eq!(report.errors, 2);
    assert_eq!(report.error_rate, 0.02);
    assert_eq!(report.timeout_rate, 0.01);
    assert_eq!(report.errors_by_kind.get("503 CIRCUIT_OPEN"), Some(&1));
    assert_eq!(report.errors_by_kind.get("timeout"), Some(&1));
    assert!(!report.pass);
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["error_rate < 0.001"]);
    // A looser criterion passes the same run.
    let loose = Criteria {
        max_error_rate: 0.05,
        ..Criteria::default()
    };
    assert!(report_of(&failures, loose).pass);
}

#[test]
fn a_cache_hit_rate_asked_for_but_unknown_fails() {
    let criteria = Criteria {
        min_cache_hit_rate: Some(0.9),
        ..Criteria::default()
    };
    let report = report_of(&[], criteria);
    assert!(!report.pass);
    assert!(report.summary().contains("FAIL cache_hit_rate >= 0.9"));
}

#[test]
fn the_report_directory_holds_each_chart_as_a_png_of_its_size() {
    let mut report = report_of(
        &[Outcome::Answered {
            status: 503,
            code: Some("CIRCUIT_OPEN".to_owned()),
        }],
        Criteria::default(),
    );
    report.markers.push(Marker {
        at_s: 0.5,
        label: "chaos: 100 ms → 5000 ms".to_owned(),
    });
    let dir = std::env::temp_dir().join(format!("sekisho-report-png-{}", std::process::id()));
    let written = report.write(&dir).expect("report written");
    for stem in ["latency-1", "throughput", "errors"] {
        let path = dir.join(format!("{stem}.png"));
        assert!(
            written.contains(&path),
            "{stem}.png not listed: {written:?}"
        );
        let file = std::fs::read(&path).expect("the PNG is there");
        let decoder = png::Decoder::new(std::io::Cursor::new(file));
        let reader = decoder.read_info().expect("a PNG");
        let info = reader.info();
        assert_eq!(
            (info.width, info.height),
            (png_chart::WIDTH, png_chart::HEIGHT),
            "{stem}.png"
        );
        assert_eq!(info.color_type, png::ColorType::Rgb);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
