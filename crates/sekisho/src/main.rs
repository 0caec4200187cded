//! The sekisho binary: command line and wiring only.
//!
//! `run` starts the gateway and its admin listener and wires signals (SIGTERM/SIGINT drain and
//! exit 0, SIGHUP reloads) and the config file watch; `check` validates a config; `upstream`
//! runs the chaos upstream; `demo` runs the example config with chaos upstreams behind it;
//! `load` runs a load scenario (sekisho-load) and exits 0 when it met its criteria, 1 when not,
//! 2 when it could not run; `schema` prints the config's JSON Schema; `backup` and `restore`
//! copy the store to a file and back (`backup.rs`); `user`, `role`, `migrate` (`users.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sekisho_config::Config;
use sekisho_gateway::Gateway;

mod args;
mod backup;
mod demo;
mod load;
mod monitor;
mod runtime;
mod tasks;

use args::{parse_duration, parse_ratio};

/// jemalloc instead of the system's allocator, with its background purging thread: it hands
/// the memory of closed connections back to the system (glibc's malloc kept 600 MB after
/// 10,000 connections closed; jemalloc falls back to ≈ 45 MB within 30 s: decision 0021,
/// `scripts/bench-conn-memory`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use demo::demo;
use load::{load, LoadArgs};
use monitor::monitor;
use runtime::{build_runtime, gateway_runtime};

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
    /// Write a consistent copy of the store (database) to a file while the gateway runs.
    Backup {
        /// The config file (TOML): its [store] names the database.
        #[arg(long, short)]
        config: PathBuf,
        /// The backup file to write (`-` for stdout), replaced only once the copy is complete;
        /// or an existing directory, to write `sekisho-<UTC time>.jsonl` in it.
        #[arg(long, short)]
        out: PathBuf,
        /// With --out DIR: keep only the newest N backups there.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
    },
    /// Replace the store's content with a backup's, all or nothing (stop the instances first).
    Restore {
        /// The config file (TOML): its [store] names the database.
        #[arg(long, short)]
        config: PathBuf,
        /// The backup file (written by `sekisho backup`).
        file: PathBuf,
        /// Restore even though something answers on the config's admin address.
        #[arg(long)]
        force: bool,
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
        Command::Backup { config, out, keep } => exit_with(backup::backup(&config, &out, keep)),
        Command::Restore {
            config,
            file,
            force,
        } => exit_with(backup::restore(&config, &file, force)),
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

fn run_file(path: &Path) -> anyhow::Result<()> {
    let (config, bytes) = read_config(path)?;
    init_logging();
    let runtime = gateway_runtime(&config.server)?;
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
    // The config the monitor is made from: a reload from here on is applied by its task.
    let monitor_config = gateway.config();
    let alerting = (!monitor_config.alerts.receivers.is_empty()).then(|| {
        std::sync::Arc::new(std::sync::Mutex::new(sekisho_monitor::Monitor::new(
            &monitor_config.alerts,
            std::time::Instant::now(),
        )))
    });
    // The notification outbox — the durable task queue — lives in the database (`store`):
    // opened, and migrated, when there is someone to notify or auth work to keep.
    let outbox = if alerting.is_some() || gateway.auth().is_some() {
        let base_dir = config_path.as_deref().and_then(Path::parent);
        let store = &gateway.config().store;
        // With [auth], its pool: on SQLite one connection serialises every writer (two
        // pools on one file would make a transaction fail at once with SQLITE_BUSY).
        let database = match gateway.auth() {
            Some(auth) => auth.directory().database().clone(),
            None => sekisho_db::Database::open(store, base_dir, 4)
                .await
                .context("cannot open the database of the notification outbox")?,
        };
        let settings =
            sekisho_monitor::OutboxSettings::from_config(&gateway.config().alerts.outbox());
        Some(
            sekisho_monitor::Outbox::open(database, settings)
                .await
                .context("cannot prepare the notification outbox")?,
        )
    } else {
        None
    };
    if let (Some(auth), Some(outbox)) = (gateway.auth(), &outbox) {
        tasks::connect(auth, outbox);
    }
    // `[store.backup]`: backups taken by the running gateway, on a connection of their own.
    if let Some(schedule) = gateway.config().store.backup.clone() {
        let base_dir = config_path.as_deref().and_then(Path::parent);
        let store = &gateway.config().store;
        let database = sekisho_db::Database::open(store, base_dir, 1)
            .await
            .context("cannot open the database for the scheduled backups")?;
        database
            .migrate()
            .await
            .context("cannot prepare the database for the scheduled backups")?;
        let dir = match base_dir {
            Some(base) if Path::new(&schedule.dir).is_relative() => base.join(&schedule.dir),
            _ => PathBuf::from(&schedule.dir),
        };
        tokio::spawn(backup::schedule(database, dir, schedule));
    }
    // The receivers' trust (the system's CA store, each `ca_file`), read once; `check` has
    // read the files already, so a failure here is a file changed since.
    let delivery_clients = match &outbox {
        Some(_) => Some(
            sekisho_monitor::https::Clients::from_config(
                &gateway.config().alerts,
                config_path.as_deref().and_then(Path::parent),
            )
            .context("cannot prepare the notification channels")?,
        ),
        None => None,
    };
    if let Some(monitor) = &alerting {
        admin = admin.with_alerts(std::sync::Arc::clone(monitor));
    }
    if let Some(outbox) = &outbox {
        admin = admin.with_outbox(outbox.clone());
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
    let delivery_task = outbox
        .clone()
        .zip(delivery_clients)
        .map(|(outbox, clients)| tokio::spawn(sekisho_monitor::worker::run_with(outbox, clients)));
    let data_dir = sekisho_db::data_dir(
        &gateway.config().store,
        config_path.as_deref().and_then(Path::parent),
    );
    // The listener's certificate, for `tls_expiry_days` (resolved as the gateway loads it).
    let certificate = gateway.config().server.tls.as_ref().map(|tls| {
        let file = Path::new(&tls.get_ref().cert);
        match config_path.as_deref().and_then(Path::parent) {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_path_buf(),
        }
    });
    let task_queue = outbox.clone();
    let monitor_task = alerting.zip(outbox).map(|(shared, outbox)| {
        tokio::spawn(monitor(
            gateway.clone(),
            monitor_config,
            shared,
            outbox,
            data_dir,
            certificate,
        ))
    });

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
    // The audit rows, last logins and lockouts still queued are stored before the exit (their
    // log lines are out already), and the worker applies what is stored while the bound
    // lasts; what it does not is applied at the next start. A database that does not take
    // them within the bound is logged, not waited for.
    if let Some(auth) = gateway.auth() {
        tracing::info!("writing the audit queue before the exit");
        let deadline = tokio::time::Instant::now() + AUTH_FLUSH_LIMIT;
        let stored = tokio::time::timeout_at(deadline, auth.flush())
            .await
            .is_ok();
        let applied = match (&task_queue, delivery_task.is_some()) {
            (Some(queue), true) if stored => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                queue.drain_tasks(tasks::AUTH_TASKS, left).await
            }
            _ => false,
        };
        if !stored {
            tracing::error!(
                waited = ?AUTH_FLUSH_LIMIT,
                "the audit queue was not written to the database before the exit; its events are in the log"
            );
        } else if !applied {
            tracing::warn!(
                "some audit tasks are stored but not applied; the next start applies them"
            );
        }
    }
    if let Some(task) = delivery_task {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long a shutdown waits for the audit queue to reach the database.
const AUTH_FLUSH_LIMIT: Duration = Duration::from_secs(10);

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
    let runtime = build_runtime(1)?;
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
