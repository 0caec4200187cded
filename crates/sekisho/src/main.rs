//! The sekisho binary: command line and wiring only.
//!
//! `run` starts the gateway and its admin listener and wires signals (SIGTERM/SIGINT drain and
//! exit 0, SIGHUP reloads) and the config file watch; `check` validates a config; `upstream`
//! runs the chaos upstream; `demo` runs the example config with chaos upstreams behind it;
//! `load` runs a load scenario (sekisho-load) and exits 0 when it met its criteria, 1 when not,
//! 2 when it could not run; `schema` prints the config's JSON Schema.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sekisho_config::Config;
use sekisho_gateway::Gateway;

/// sekisho: a resilient API gateway.
#[derive(Debug, Parser)]
#[command(name = "sekisho", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway; logs go to stderr; exits 0 after a graceful shutdown on SIGTERM/SIGINT.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config: a one-line summary and exit 0, or FILE:LINE:COLUMN errors and exit 1.
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A chaos upstream for demos and tests; change it at run time with POST /_chaos.
    Upstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Added latency per request, e.g. 100ms.
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        latency: Duration,
        /// Share of requests answered 500, from 0 to 1.
        #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
        error_rate: f64,
        /// Name shown in answers (default: the listen address).
        #[arg(long)]
        name: Option<String>,
    },
    /// The whole picture on one machine: the example config with chaos upstreams behind it.
    Demo {
        /// Config to run (default: the built-in examples/sekisho.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of the config file, for editors.
    Schema,
    /// Put a URL or a gateway under load with a built-in scenario and judge it: exit 0 when the
    /// run met its criteria, 1 when not, 2 when it could not run (docs/load.md).
    Load(Box<LoadArgs>),
    /// Users of edge authentication ([auth]).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Roles and their permissions.
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// Apply the database's pending schema migrations (or list them with --status).
    Migrate {
        /// The config file (TOML): its [store] names the database.
        #[arg(long, short)]
        config: PathBuf,
        /// List each migration and whether it is applied, without applying anything.
        #[arg(long)]
        status: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user, with a password read from stdin or an existing hash.
    Add {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The user's name.
        name: String,
        /// A role for the user (repeat for more); the role must exist.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Read the password from stdin (one line).
        #[arg(long, conflicts_with = "password_hash")]
        password_stdin: bool,
        /// An existing hash (argon2id, bcrypt or MD5 hex) imported from an older system.
        #[arg(long)]
        password_hash: Option<String>,
    },
    /// Set a user's password (read from stdin); its sessions are revoked.
    Passwd {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The user's name.
        name: String,
        /// Read the password from stdin (one line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Delete a user and its sessions.
    Del {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The user's name.
        name: String,
    },
    /// List users: name, roles, disabled, password scheme.
    List {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RoleCommand {
    /// Create a role, or replace the permissions of an existing one.
    Add {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The role's name.
        name: String,
        /// A permission of the role (repeat for more).
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
}

/// Watches the gateway every `monitor.interval`: its upstreams, circuits and the host's vitals
/// as signals, the alert rules over them, notifications to the receivers' webhooks (the config
/// at start; a reload does not change the rules yet).
async fn monitor(gateway: Gateway, shared: sekisho_admin::SharedMonitor) {
    let interval = gateway.config().monitor.interval.0;
    let (deliveries, queue) = tokio::sync::mpsc::unbounded_channel();
    let deliverer = tokio::spawn(sekisho_monitor::deliver(queue));
    let mut vitals = sekisho_monitor::Vitals::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut signals = sekisho_monitor::Signals::new();
        vitals.sample(&mut signals);
        gateway_signals(&gateway, &mut signals);
        let due = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cycle(&signals, std::time::Instant::now());
        for delivery in due {
            if deliveries.send(delivery).is_err() {
                deliverer.abort();
                return;
            }
        }
    }
}

/// The gateway's own figures as signals: per upstream, whether no target is healthy, the
/// targets' mean error rate and their slowest smoothed latency (seconds, standing in for the
/// p95 until per-upstream histograms are kept), and whether its circuit is open.
fn gateway_signals(gateway: &Gateway, signals: &mut sekisho_monitor::Signals) {
    for upstream in gateway.upstreams() {
        let targets = &upstream.targets;
        let healthy = targets
            .iter()
            .filter(|t| t.health != "unhealthy" && t.eligible)
            .count();
        signals.insert(
            ("no_healthy_targets".to_owned(), upstream.name.clone()),
            if healthy == 0 { 1.0 } else { 0.0 },
        );
        if !targets.is_empty() {
            let errors = targets.iter().map(|t| t.error_rate).sum::<f64>() / targets.len() as f64;
            signals.insert(
                ("upstream_error_rate".to_owned(), upstream.name.clone()),
                errors,
            );
            let slowest = targets
                .iter()
                .map(|t| t.ewma_latency_ms)
                .fold(0.0, f64::max);
            signals.insert(
                ("upstream_latency_p95".to_owned(), upstream.name.clone()),
                slowest / 1000.0,
            );
        }
    }
    for circuit in gateway.circuits() {
        let open = matches!(circuit.state, "open" | "forced_open");
        signals.insert(
            ("circuit_open".to_owned(), circuit.name.clone()),
            if open { 1.0 } else { 0.0 },
        );
    }
}

/// `sekisho load`: CONTRACT.md "Load scenarios", and the extensions in docs/load.md.
#[derive(Debug, clap::Args)]
struct LoadArgs {
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
    /// Write report.json, report.html and the charts (.svg) into this directory.
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

fn parse_duration(text: &str) -> Result<Duration, String> {
    sekisho_config::parse_duration(text).map_err(|e| e.to_string())
}

/// `MIN..MAX` or a single duration.
fn parse_think(text: &str) -> Result<(Duration, Duration), String> {
    match text.split_once("..") {
        Some((min, max)) => {
            let (min, max) = (parse_duration(min)?, parse_duration(max)?);
            if min > max {
                return Err(format!(
                    "{text}: the shortest think time is longer than the longest"
                ));
            }
            Ok((min, max))
        }
        None => parse_duration(text).map(|d| (d, d)),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Schema => {
            print!("{}", sekisho_config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Run { config } => exit_with(run_file(&config)),
        Command::Upstream {
            listen,
            latency,
            error_rate,
            name,
        } => exit_with(run_upstream(listen, latency, error_rate, name)),
        Command::Demo { config } => exit_with(demo(config.as_deref())),
        Command::Load(args) => load(*args),
        Command::User { command } => exit_with(users::user(command)),
        Command::Role { command } => exit_with(users::role(command)),
        Command::Migrate { config, status } => exit_with(users::migrate(&config, status)),
    }
}

mod users;

fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sekisho: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match sekisho_config::load(path) {
        Ok(config) => {
            println!("{}: ok: {}", path.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEKISHO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn build_runtime(workers: Option<u32>) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = workers
        .map(|w| w as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if workers <= 1 {
        // One worker: a current-thread runtime, no work stealing, as nginx's one process.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    Ok(runtime)
}

fn run_file(path: &Path) -> anyhow::Result<()> {
    let (config, bytes) = read_config(path)?;
    init_logging();
    let runtime = build_runtime(config.server.workers.map(|w| w.get()))?;
    runtime.block_on(serve(config, Some((path.to_owned(), bytes))))
}

/// The config at `path` and the bytes it was made of: they are kept, so the file watch compares
/// against exactly what was loaded (a change made right after start is not taken as the
/// starting point). An unreadable or invalid file is printed with its position.
fn read_config(path: &Path) -> anyhow::Result<(Config, Vec<u8>)> {
    sekisho_config::load_with_contents(path).map_err(|error| {
        eprintln!("{error}");
        anyhow::anyhow!("the config is invalid; nothing was started")
    })
}

/// Runs the gateway and admin listener until SIGTERM/SIGINT, then drains.
/// `file` is the config file's path and the bytes the config was made of, when there is one.
async fn serve(config: Config, file: Option<(PathBuf, Vec<u8>)>) -> anyhow::Result<()> {
    let admin_listen = config.admin.listen.0.clone();
    let admin_token = config.admin.token.clone();
    let watch_interval = config.admin.watch_interval.0;
    let summary = config.summary();
    let (config_path, file_bytes) = file.unzip();
    let auth = match &config.auth {
        Some(_) => {
            let base_dir = config_path.as_deref().and_then(Path::parent);
            let auth = sekisho_auth::Auth::open(&config, base_dir)
                .await
                .context("cannot start authentication")?;
            let auth = std::sync::Arc::new(auth);
            auth.spawn_housekeeping(Duration::from_secs(10));
            auth.spawn_warming(auth.config().warm_interval.0);
            Some(auth)
        }
        None => None,
    };
    let gateway = Gateway::with_auth(config, config_path.clone(), auth)
        .context("cannot start the gateway")?;
    if let Some(bytes) = file_bytes {
        gateway.loaded_file_contents(bytes);
    }
    let listener = gateway
        .bind()
        .await
        .with_context(|| format!("cannot listen on {}", gateway.config().server.listen))?;
    let mut admin = sekisho_admin::AdminServer::bind(&admin_listen, gateway.clone(), admin_token)
        .await
        .with_context(|| format!("cannot listen on {admin_listen} (admin)"))?;
    let alerting = (!gateway.config().alerts.receivers.is_empty()).then(|| {
        std::sync::Arc::new(std::sync::Mutex::new(sekisho_monitor::Monitor::new(
            &gateway.config().alerts,
            std::time::Instant::now(),
        )))
    });
    if let Some(monitor) = &alerting {
        admin = admin.with_alerts(std::sync::Arc::clone(monitor));
    }
    let address = listener.local_addr()?;
    let admin_address = admin.local_addr()?;
    tracing::info!(
        address = %address,
        admin = %admin_address,
        config = %config_path.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
        summary = %summary,
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );

    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin.serve(async {
        let _ = admin_stopped.await;
    }));
    let reload_task = tokio::spawn(reload_on_sighup(gateway.clone()));
    let watch_task = (config_path.is_some() && !watch_interval.is_zero()).then(|| {
        let gateway = gateway.clone();
        tokio::spawn(async move { gateway.watch_config_file(watch_interval).await })
    });
    let monitor_task = alerting.map(|shared| tokio::spawn(monitor(gateway.clone(), shared)));

    gateway.serve(listener, shutdown_signal()).await;

    if let Some(task) = monitor_task {
        task.abort();
    }
    reload_task.abort();
    if let Some(task) = watch_task {
        task.abort();
    }
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT will stop sekisho");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

async fn reload_on_sighup(gateway: Gateway) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload through the admin API or the file watch");
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        let gateway = gateway.clone();
        let _ = tokio::task::spawn_blocking(move || gateway.reload()).await;
    }
}

fn run_upstream(
    listen: SocketAddr,
    latency: Duration,
    error_rate: f64,
    name: Option<String>,
) -> anyhow::Result<()> {
    init_logging();
    let runtime = build_runtime(Some(1))?;
    runtime.block_on(async move {
        let server = sekisho_load::ChaosServer::bind(sekisho_load::ChaosOptions {
            listen,
            latency,
            error_rate,
            name,
        })
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(address = %server.local_addr(), "chaos upstream listening");
        server.run(shutdown_signal()).await?;
        Ok(())
    })
}

const DEMO_CONFIG: &str = include_str!("../../../examples/sekisho.toml");

fn demo(path: Option<&Path>) -> anyhow::Result<()> {
    let (config, file) = match path {
        Some(path) => {
            let (config, bytes) = read_config(path)?;
            (config, Some((path.to_owned(), bytes)))
        }
        None => (
            sekisho_config::parse(DEMO_CONFIG, "examples/sekisho.toml")
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            None,
        ),
    };
    init_logging();
    let runtime = build_runtime(config.server.workers.map(|w| w.get()))?;
    runtime.block_on(async move {
        let mut upstream_tasks = Vec::new();
        for (name, upstream) in &config.upstreams {
            for target in upstream.targets.get_ref() {
                let Ok(listen) = target.address.parse::<SocketAddr>() else {
                    tracing::warn!(target = %target.address, "not an IP address; no demo upstream started for it");
                    continue;
                };
                if !listen.ip().is_loopback() {
                    tracing::warn!(target = %target.address, "not a loopback address; no demo upstream started for it");
                    continue;
                }
                if let Some(service) = sekisho_load::Service::for_upstream(name.get_ref()) {
                    // The seeds' demo services stand behind upstreams of their names.
                    let server = sekisho_load::ServiceServer::bind(service, listen, 0.2)
                        .await
                        .with_context(|| format!("cannot start the demo {service:?} service on {listen}"))?;
                    upstream_tasks.push(tokio::spawn(server.run(std::future::pending())));
                    continue;
                }
                let server = sekisho_load::ChaosServer::bind(sekisho_load::ChaosOptions {
                    listen,
                    latency: Duration::from_millis(20),
                    error_rate: 0.0,
                    name: Some(format!("{}-{}", name.get_ref(), listen.port())),
                })
                .await
                .with_context(|| format!("cannot start the demo upstream on {listen}"))?;
                upstream_tasks.push(tokio::spawn(server.run(std::future::pending())));
            }
        }
        let listen = config.server.listen.clone();
        let admin = config.admin.listen.clone();
        let first_route = config
            .routes
            .first()
            .and_then(|r| r.get_ref().path_prefix.as_ref().map(|p| p.get_ref().clone()))
            .unwrap_or_else(|| "/".to_owned());
        let first_target = config
            .upstreams
            .iter()
            .filter(|(name, _)| sekisho_load::Service::for_upstream(name.get_ref()).is_none())
            .find_map(|(_, u)| u.targets.get_ref().first().map(|t| t.address.clone()))
            .unwrap_or_default();
        let services = if config.upstreams.keys().any(|n| n.get_ref() == "shortener") {
            format!(
                "  shorten a URL:  curl -i http://{listen}/api/v1/shorten -d '{{\"url\":\"https://example.com\"}}'\n  follow it (cached at the gateway):  curl -i http://{listen}/s/KEY\n  notify:  curl -i http://{listen}/api/v1/notifications -H 'Idempotency-Key: 1' -d '{{\"user\":\"ada\",\"channel\":\"email\",\"message\":\"hi\"}}'\n"
            )
        } else {
            String::new()
        };
        eprintln!(
            "\nsekisho demo: {} demo upstream(s) started.\n  try:   curl -i http://{listen}{first_route}\n{services}  slow a service down:  curl -X POST http://{first_target}/_chaos -d '{{\"latency_ms\":5000}}'\n  metrics: curl http://{admin}/metrics\n  stop with Ctrl-C\n",
            upstream_tasks.len()
        );
        let result = serve(config, file).await;
        for task in upstream_tasks {
            task.abort();
        }
        result
    })
}

/// `sekisho load`: the summary on stdout, the progress on stderr; 0 pass, 1 fail, 2 not run.
fn load(args: LoadArgs) -> ExitCode {
    use sekisho_load::scenario::ScenarioOptions;
    let mut options = ScenarioOptions::new(args.scenario, &args.target);
    options.rate = args.rate;
    options.users = args.users;
    options.duration = args.duration;
    options.timeout = args.timeout;
    options.max_outstanding = args.max_outstanding;
    options.connections = args.connections;
    options.think = args.think;
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
    let runtime = match build_runtime(Some(args.workers.max(1))) {
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
