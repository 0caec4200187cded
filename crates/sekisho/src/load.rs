//! `sekisho load`: its arguments and the run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::{parse_duration, parse_ratio, parse_think};
use crate::runtime::build_runtime;

/// `sekisho load`: CONTRACT.md "Load scenarios", and the extensions in docs/load.md.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// The URL to load (`get`), or the gateway's base URL (the other scenarios).
    #[arg(long, visible_alias = "url")]
    target: String,
    /// get, cascade, login-rush, refresh-storm or mixed-errors.
    #[arg(long, default_value = "get")]
    scenario: sekisho_load::scenario::Scenario,
    /// Closed-loop users (each waits for its answer, then thinks); without --rate, the run uses
    /// the closed model; the login scenarios' users (default 20).
    #[arg(long)]
    users: Option<usize>,
    /// How long requests keep arriving, e.g. 30s or 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Arrivals per second on a fixed schedule (open model); default 100 (get), 50 (cascade).
    #[arg(long)]
    rate: Option<f64>,
    /// Write report.json, report.html and the charts (.svg and .png) into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// A request without its whole answer after this is a timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Requests in flight at most (open model); one due beyond that is an `unsent` error.
    #[arg(long, default_value_t = 10_000)]
    max_outstanding: usize,
    /// HTTP/1.1 connections at most, as a client's pool; a request waits for a free one (the
    /// wait counts in its latency).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Think time of a closed-loop user, MIN..MAX (e.g. 1s..3s) or one duration.
    #[arg(long, default_value = "0s", value_parser = parse_think)]
    think: (Duration, Duration),
    /// Open model over HTTP/1.1: each of the --connections connections is a task that sends its
    /// own share of the arrivals (as wrk2 does), instead of one shared pool; cheaper per
    /// request, but a slow answer delays its connection's next arrivals.
    #[arg(long)]
    per_connection: bool,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Pass only if p95 latency is below this, in milliseconds.
    #[arg(long, default_value_t = 500.0)]
    p95_ms: f64,
    /// Pass only if p99 latency is below this, in milliseconds.
    #[arg(long, default_value_t = 1000.0)]
    p99_ms: f64,
    /// Pass only if the share of requests in error is below this (0 to 1).
    #[arg(long, default_value_t = 0.001, value_parser = parse_ratio)]
    max_error_rate: f64,
    /// Pass only if the gateway's cache hit rate (needs --metrics) is at least this (0 to 1).
    #[arg(long, value_parser = parse_ratio)]
    min_cache_hit_rate: Option<f64>,
    /// The gateway's metrics URL (http://ADMIN/metrics): cache hit rate, CPU, memory, circuit.
    #[arg(long)]
    metrics: Option<String>,
    /// cascade: the chaos upstream to slow down (its base URL).
    #[arg(long)]
    chaos: Option<String>,
    /// cascade: the path of the route to the slowed upstream.
    #[arg(long, default_value = "/api/payments")]
    slow_path: String,
    /// cascade: the path of another route (repeat for more); login-rush: the work requests'.
    #[arg(long = "path", default_value = "/api/orders")]
    paths: Vec<String>,
    /// cascade: the slowed upstream's latency before and after the slowdown.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    base_latency: Duration,
    /// cascade: its latency during the slowdown.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    chaos_latency: Duration,
    /// login scenarios: the account of each user: `{id}` becomes its number, from 0.
    #[arg(long, default_value = "user{id}")]
    username: String,
    /// login scenarios: the accounts' password.
    #[arg(long, default_value = "password")]
    password: String,
    /// login scenarios: the seeds' think times (1–3 s, 2–5 s) multiplied by this.
    #[arg(long, default_value_t = 1.0)]
    think_scale: f64,
    /// login scenarios: where the gateway's /auth endpoints are.
    #[arg(long, default_value = "/auth")]
    auth_prefix: String,
    /// Worker threads of the generator (1: one core, a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

/// `sekisho load`: the summary on stdout, the progress on stderr; 0 pass, 1 fail, 2 not run.
pub(crate) fn load(args: LoadArgs) -> ExitCode {
    use sekisho_load::scenario::ScenarioOptions;
    let mut options = ScenarioOptions::new(args.scenario, &args.target);
    options.rate = args.rate;
    options.users = args.users;
    options.duration = args.duration;
    options.timeout = args.timeout;
    options.max_outstanding = args.max_outstanding;
    options.connections = args.connections;
    options.think = args.think;
    if args.per_connection {
        options.dispatch = sekisho_load::Dispatch::PerConnection;
    }
    if args.http2 {
        options.http = sekisho_load::HttpVersion::Http2;
    }
    options.criteria = sekisho_load::Criteria {
        p95_ms: args.p95_ms,
        p99_ms: args.p99_ms,
        max_error_rate: args.max_error_rate,
        min_cache_hit_rate: args.min_cache_hit_rate,
        ..sekisho_load::Criteria::default()
    };
    options.metrics = args.metrics;
    if args.quiet {
        options.progress = sekisho_load::Progress::Off;
    }
    options.chaos = args.chaos;
    options.slow_path = args.slow_path;
    options.paths = args.paths;
    options.base_latency = args.base_latency;
    options.chaos_latency = args.chaos_latency;
    options.username = args.username;
    options.password = args.password;
    options.think_scale = args.think_scale;
    options.auth_prefix = args.auth_prefix;
    let not_run = |error: &dyn std::fmt::Display| {
        eprintln!("sekisho load: {error}");
        ExitCode::from(2)
    };
    let runtime = match build_runtime(args.workers.max(1) as usize) {
        Ok(runtime) => runtime,
        Err(error) => return not_run(&error),
    };
    let result = runtime.block_on(sekisho_load::scenario::run(&options, async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    let report = match result {
        Ok(report) => report,
        Err(error) => return not_run(&error),
    };
    print!("{}", report.summary());
    if let Some(dir) = &args.report {
        match report.write(dir) {
            Ok(paths) => {
                for path in paths {
                    println!("  wrote {}", path.display());
                }
            }
            Err(error) => return not_run(&error),
        }
    }
    if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
