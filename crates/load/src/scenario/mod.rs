//! The scenarios of `sekisho load`: what to send, how it arrives, what else happens during the
//! run (chaos, metrics scrapes), and what the run is judged on.

mod cascade;
mod journeys;
mod metrics;

use std::future::Future;
use std::time::Duration;

pub use crate::report::{CascadeFindings, PhaseFigures};

use crate::generator::{Dispatch, Endpoint, Generator, HttpVersion, LoadPlan, Model, Progress};
use crate::report::{Criteria, Report};
use crate::LoadError;

/// A built-in scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A plain GET of the target URL: at a fixed arrival rate (open model), or by `--users`
    /// closed-loop users with think times.
    Get,
    /// A chaos upstream behind the gateway slows from 100 ms to 5 s mid-run; the other routes'
    /// latency and the time to contain are measured.
    Cascade,
    /// Ramp-up, login, think, profile, work with refreshes, logout (needs `[auth]`).
    LoginRush,
    /// Many clients refreshing inside one window (needs `[auth]`).
    RefreshStorm,
    /// Logins with 30 % wrong passwords (needs `[auth]`).
    MixedErrors,
}

impl Scenario {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Cascade => "cascade",
            Self::LoginRush => "login-rush",
            Self::RefreshStorm => "refresh-storm",
            Self::MixedErrors => "mixed-errors",
        }
    }

    /// Every scenario.
    pub const ALL: [Scenario; 5] = [
        Self::Get,
        Self::Cascade,
        Self::LoginRush,
        Self::RefreshStorm,
        Self::MixedErrors,
    ];
}

impl std::str::FromStr for Scenario {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|scenario| scenario.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
                format!("no scenario `{text}`; one of {}", names.join(", "))
            })
    }
}

/// Everything `sekisho load` was asked for.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    pub scenario: Scenario,
    /// The URL (`get`) or the gateway's base URL (the other scenarios).
    pub target: String,
    /// Arrivals per second (open model); each scenario has a default.
    pub rate: Option<f64>,
    /// Users (closed model).
    pub users: Option<usize>,
    pub duration: Duration,
    /// A request without its whole answer after this is a timeout.
    pub timeout: Duration,
    /// Requests in flight at most (open model).
    pub max_outstanding: usize,
    /// HTTP/1.1 connections at most.
    pub connections: usize,
    /// Open model over HTTP/1.1: a shared pool, or a task per connection.
    pub dispatch: Dispatch,
    /// Think time between a closed user's requests, drawn between the two.
    pub think: (Duration, Duration),
    pub http: HttpVersion,
    pub criteria: Criteria,
    /// The gateway's `/metrics` URL: cache hit rate, CPU and memory, circuit state.
    pub metrics: Option<String>,
    pub progress: Progress,
    /// `cascade`: the chaos upstream to slow down (its base URL or its `/_chaos` URL).
    pub chaos: Option<String>,
    /// `cascade`: the path of the route to the slowed upstream.
    pub slow_path: String,
    /// `cascade`: the paths of the other routes.
    pub paths: Vec<String>,
    /// `cascade`: the slowed upstream's latency before and after the slowdown.
    pub base_latency: Duration,
    /// `cascade`: its latency during the slowdown.
    pub chaos_latency: Duration,
    /// Login scenarios: the account of user number n (`{id}` is replaced by n, from 0).
    pub username: String,
    /// Login scenarios: the accounts' password.
    pub password: String,
    /// Login scenarios: the seeds' think times multiplied by this.
    pub think_scale: f64,
    /// Login scenarios: where the gateway's `/auth` endpoints are (`[auth].path_prefix`).
    pub auth_prefix: String,
}

impl ScenarioOptions {
    /// Options for `scenario` against `target` with the defaults of the command line.
    pub fn new(scenario: Scenario, target: &str) -> Self {
        Self {
            scenario,
            target: target.to_owned(),
            rate: None,
            users: None,
            duration: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            max_outstanding: 10_000,
            connections: 1000,
            dispatch: Dispatch::Shared,
            think: (Duration::ZERO, Duration::ZERO),
            http: HttpVersion::Http1,
            criteria: Criteria::default(),
            metrics: None,
            progress: Progress::Auto,
            chaos: None,
            slow_path: "/api/payments".to_owned(),
            paths: vec!["/api/orders".to_owned()],
            base_latency: Duration::from_millis(100),
            chaos_latency: Duration::from_secs(5),
            username: "user{id}".to_owned(),
            password: "password".to_owned(),
            think_scale: 1.0,
            auth_prefix: "/auth".to_owned(),
        }
    }

    /// The arrival model: closed with `--users` alone, open at `--rate` (or `default_rate`);
    /// both at once is a mistake worth saying.
    fn model(&self, default_rate: f64) -> Result<Model, LoadError> {
        match (self.rate, self.users) {
            (Some(_), Some(_)) => Err(LoadError::BadPlan(
                "give --rate (arrivals on a schedule) or --users (closed-loop users), not both"
                    .to_owned(),
            )),
            (None, Some(users)) => Ok(Model::Closed {
                users,
                think_min: self.think.0,
                think_max: self.think.1,
            }),
            (rate, None) => Ok(Model::Open {
                rate: rate.unwrap_or(default_rate),
                max_outstanding: self.max_outstanding,
            }),
        }
    }

    fn plan(&self, endpoints: Vec<Endpoint>, default_rate: f64) -> Result<LoadPlan, LoadError> {
        Ok(LoadPlan {
            endpoints,
            model: self.model(default_rate)?,
            duration: self.duration,
            timeout: self.timeout,
            http: self.http,
            connections: self.connections,
            progress: self.progress,
            dispatch: self.dispatch,
        })
    }
}

/// The base URL `target` joined with `path`.
pub(crate) fn join(target: &str, path: &str) -> String {
    format!(
        "{}/{}",
        target.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Runs the scenario until its end (or `stop`) and returns its judged report.
pub async fn run(
    options: &ScenarioOptions,
    stop: impl Future<Output = ()>,
) -> Result<Report, LoadError> {
    match options.scenario {
        Scenario::Get => get(options, stop).await,
        Scenario::Cascade => cascade::run(options, stop).await,
        Scenario::LoginRush | Scenario::RefreshStorm | Scenario::MixedErrors => {
            journeys::run(options, stop).await
        }
    }
}

async fn get(
    options: &ScenarioOptions,
    stop: impl Future<Output = ()>,
) -> Result<Report, LoadError> {
    let endpoint = Endpoint::get(&options.target)?;
    let plan = options.plan(vec![endpoint], 100.0)?;
    let gauge = metrics::Gauge::start(options).await?;
    let generator = Generator::new(plan)?;
    let output = generator_run(generator, stop).await;
    let mut report = Report::build(
        options.scenario.name(),
        &options.target,
        &output.0,
        &output.1,
        options.criteria,
    );
    if let Some(gauge) = gauge {
        let figures = gauge.finish().await;
        report.cache_hit_rate = figures.cache_hit_rate;
        report.gateway = Some(figures);
    }
    report.judge(Vec::new());
    Ok(report)
}

/// Runs `generator`; its plan and what it produced.
async fn generator_run(
    generator: Generator,
    stop: impl Future<Output = ()>,
) -> (LoadPlan, crate::generator::RunOutput) {
    let plan = generator.plan().clone();
    let output = generator.run(stop).await;
    (plan, output)
}
