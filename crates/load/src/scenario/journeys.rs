//! The seeds' login scenarios, as closed-model users walking a journey over the gateway's
//! `/auth` endpoints (CONTRACT.md "Authentication, sessions and users"):
//!
//! - `login-rush`: users arrive over the first third of the run (the ramp-up); each logs in,
//!   thinks 1–3 s, reads its profile (`GET /auth/me`), thinks 2–5 s, does 5–15 work requests
//!   (`--path`, with its bearer token, thinking 1–3 s between them) refreshing its token after
//!   every fifth, logs out, and starts again until the run ends;
//! - `refresh-storm`: every user logs in during the first quarter, refreshes once at a random
//!   moment of one window (the middle half of the run), proves the new token on `/auth/me`, and
//!   logs out in the last quarter;
//! - `mixed-errors`: users, starting spread over one think time, log in and out in a loop, 30 %
//!   of the logins with a wrong password (those expect 401).
//!
//! Think times are the seeds', multiplied by `--think-scale` (a test runs them 100× faster).
//! Every request is recorded under its step's endpoint, measured from its actual send.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method};
use http_body_util::Full;
use tokio::time::Instant;

use super::{join, Scenario, ScenarioOptions};
use crate::generator::recorder::Recorder;
use crate::generator::{progress, Endpoint, LoadClient, LoadPlan, Model, RunOutput};
use crate::report::{AuthFigures, Report};
use crate::LoadError;

/// The journeys' steps, as endpoints of the report (indexes below).
const LOGIN: usize = 0;
const ME: usize = 1;
const WORK: usize = 2;
const REFRESH: usize = 3;
const LOGOUT: usize = 4;
const WRONG_LOGIN: usize = 5;

/// The tokens of a logged-in user.
#[derive(Debug, Clone)]
struct Session {
    access: String,
    refresh: String,
}

/// What every user shares.
#[derive(Debug)]
struct Journey {
    client: LoadClient,
    recorder: Arc<Recorder>,
    endpoints: Vec<Endpoint>,
    username: String,
    password: String,
    think_scale: f64,
    start: Instant,
    end: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Journey {
    fn over(&self) -> bool {
        Instant::now() >= self.end || *self.stop.borrow()
    }

    /// Sleeps a seed think time between `min` and `max` seconds, scaled, but not past the end.
    async fn think(&self, min: f64, max: f64) {
        let seconds = (min + (max - min) * fastrand::f64()) * self.think_scale;
        let wait = Duration::from_secs_f64(seconds.max(0.0));
        let left = self.end.saturating_duration_since(Instant::now());
        tokio::time::sleep(wait.min(left)).await;
    }

    async fn sleep_until(&self, at: Instant) {
        tokio::time::sleep_until(at.min(self.end)).await;
    }

    fn user(&self, number: usize) -> String {
        self.username.replace("{id}", &number.to_string())
    }

    /// One request of step `endpoint`: recorded; the body when it succeeded and `keep` asks.
    async fn call(
        &self,
        endpoint: usize,
        token: Option<&str>,
        body: Option<serde_json::Value>,
        keep: bool,
    ) -> Option<Option<Bytes>> {
        let template = &self.endpoints[endpoint];
        let mut request = http::Request::new(Full::new(
            body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
        ));
        *request.method_mut() = template.method.clone();
        *request.uri_mut() = template.uri.clone();
        if template.method == Method::POST {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(token) = token {
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                request.headers_mut().insert(AUTHORIZATION, value);
            }
        }
        let sent = Instant::now();
        let (outcome, body, answered) = self.client.exchange_request(request, keep).await;
        let succeeded = self
            .recorder
            .record(endpoint, sent, sent, answered, &outcome);
        succeeded.then_some(body)
    }

    async fn login(&self, user: &str) -> Option<Session> {
        let body = serde_json::json!({"username": user, "password": self.password});
        let answer = self.call(LOGIN, None, Some(body), true).await??;
        session_of(&answer)
    }

    async fn refresh(&self, session: &Session) -> Option<Session> {
        let body = serde_json::json!({"refresh_token": session.refresh});
        let answer = self.call(REFRESH, None, Some(body), true).await??;
        session_of(&answer)
    }
}

/// The tokens of a login or refresh answer.
fn session_of(body: &[u8]) -> Option<Session> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(Session {
        access: value["access_token"].as_str()?.to_owned(),
        refresh: value["refresh_token"].as_str()?.to_owned(),
    })
}

async fn login_rush(journey: Arc<Journey>, user: usize, users: usize) {
    // The ramp-up: users arrive evenly over the first third of the run.
    let ramp = journey.end.saturating_duration_since(journey.start) / 3;
    journey
        .sleep_until(journey.start + ramp.mul_f64(user as f64 / users as f64))
        .await;
    let name = journey.user(user);
    while !journey.over() {
        let Some(mut session) = journey.login(&name).await else {
            journey.think(1.0, 3.0).await;
            continue;
        };
        journey.think(1.0, 3.0).await;
        if journey.over() {
            break;
        }
        journey.call(ME, Some(&session.access), None, false).await;
        journey.think(2.0, 5.0).await;
        let work = fastrand::usize(5..=15);
        for done in 0..work {
            if journey.over() {
                break;
            }
            if done > 0 && done % 5 == 0 {
                if let Some(next) = journey.refresh(&session).await {
                    session = next;
                }
            }
            journey.call(WORK, Some(&session.access), None, false).await;
            journey.think(1.0, 3.0).await;
        }
        journey
            .call(LOGOUT, Some(&session.access), None, false)
            .await;
    }
}

async fn refresh_storm(journey: Arc<Journey>, user: usize, users: usize) {
    let length = journey.end.saturating_duration_since(journey.start);
    let quarter = length / 4;
    journey
        .sleep_until(journey.start + quarter.mul_f64(user as f64 / users as f64))
        .await;
    let Some(session) = journey.login(&journey.user(user)).await else {
        return;
    };
    // The storm: every user refreshes once, somewhere in the middle half.
    journey
        .sleep_until(journey.start + quarter + (2 * quarter).mul_f64(fastrand::f64()))
        .await;
    let session = match journey.refresh(&session).await {
        Some(next) => {
            journey.call(ME, Some(&next.access), None, false).await;
            next
        }
        None => session,
    };
    journey
        .sleep_until(journey.start + 3 * quarter + quarter.mul_f64(fastrand::f64()))
        .await;
    journey
        .call(LOGOUT, Some(&session.access), None, false)
        .await;
}

async fn mixed_errors(journey: Arc<Journey>, user: usize, _users: usize) {
    let name = journey.user(user);
    // Users start spread over one think time, as login-rush's ramp-up and refresh-storm's first
    // quarter spread theirs: started in lockstep, every user's first login would reach the
    // gateway in the same millisecond, a burst of the generator's making (against `sekisho
    // demo`, 25 users at once overflowed its argon2 queue in the first second and nowhere else).
    journey.think(0.0, 3.0).await;
    while !journey.over() {
        if fastrand::f64() < 0.3 {
            let body = serde_json::json!({"username": name, "password": format!("{}-wrong", journey.password)});
            journey.call(WRONG_LOGIN, None, Some(body), false).await;
        } else if let Some(session) = journey.login(&name).await {
            journey.call(ME, Some(&session.access), None, false).await;
            journey
                .call(LOGOUT, Some(&session.access), None, false)
                .await;
        }
        journey.think(1.0, 3.0).await;
    }
}

fn endpoints(options: &ScenarioOptions) -> Result<Vec<Endpoint>, LoadError> {
    let auth = |path: &str| join(&options.target, &format!("{}{path}", options.auth_prefix));
    let step = |name: &str, method: Method, url: String, accept: (u16, u16)| {
        Endpoint::get(&url).map(|endpoint| Endpoint {
            name: name.to_owned(),
            method,
            accept,
            ..endpoint
        })
    };
    let work_path = options.paths.first().map_or("/api/orders", String::as_str);
    Ok(vec![
        step("login", Method::POST, auth("/login"), (200, 200))?,
        step("me", Method::GET, auth("/me"), (200, 200))?,
        step(
            &format!("work GET {work_path}"),
            Method::GET,
            join(&options.target, work_path),
            (200, 399),
        )?,
        step("refresh", Method::POST, auth("/refresh"), (200, 200))?,
        step("logout", Method::POST, auth("/logout"), (200, 204))?,
        step(
            "login (wrong password)",
            Method::POST,
            auth("/login"),
            (401, 401),
        )?,
    ])
}

pub(super) async fn run(
    options: &ScenarioOptions,
    stop: impl Future<Output = ()>,
) -> Result<Report, LoadError> {
    let users = options.users.unwrap_or(20);
    let endpoints = endpoints(options)?;
    let plan = LoadPlan {
        endpoints: endpoints.clone(),
        model: Model::Closed {
            users,
            think_min: Duration::from_secs_f64(options.think_scale),
            think_max: Duration::from_secs_f64(5.0 * options.think_scale),
        },
        duration: options.duration,
        timeout: options.timeout,
        http: options.http,
        connections: options.connections,
        progress: options.progress,
        dispatch: crate::Dispatch::Shared,
    };
    plan.validate()?;
    if !options.think_scale.is_finite() || options.think_scale < 0.0 {
        return Err(LoadError::BadPlan(format!(
            "the think scale must be 0 or more, not {}",
            options.think_scale
        )));
    }
    let gauge = super::metrics::Gauge::start(options).await?;
    let start = Instant::now();
    let recorder = Arc::new(
        Recorder::new(
            start,
            endpoints.iter().map(|e| e.accept).collect(),
            endpoints.iter().map(|e| e.judged).collect(),
        )
        .map_err(|e| LoadError::BadPlan(format!("histogram: {e}")))?,
    );
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let journey = Arc::new(Journey {
        client: LoadClient::new(options.http, options.timeout, Some(options.connections)),
        recorder: Arc::clone(&recorder),
        endpoints,
        username: options.username.clone(),
        password: options.password.clone(),
        think_scale: options.think_scale,
        start,
        end: start + options.duration,
        stop: stop_seen,
    });
    let (finished, finishing) = tokio::sync::watch::channel(false);
    let progress = tokio::spawn(progress::report(
        options.progress,
        Arc::clone(&recorder),
        options.duration,
        finishing,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..users {
        let journey = Arc::clone(&journey);
        match options.scenario {
            Scenario::RefreshStorm => tasks.spawn(refresh_storm(journey, user, users)),
            Scenario::MixedErrors => tasks.spawn(mixed_errors(journey, user, users)),
            _ => tasks.spawn(login_rush(journey, user, users)),
        };
    }
    tokio::pin!(stop);
    let stopped = tokio::select! {
        () = tokio::time::sleep_until(start + options.duration) => false,
        () = &mut stop => true,
    };
    let dispatch_time = start.elapsed();
    stopping.send_replace(true);
    // Each user's last request is bounded by the timeout.
    let _ = tokio::time::timeout(options.timeout + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let wall_time = start.elapsed();
    finished.send_replace(true);
    let _ = progress.await;
    let output = RunOutput {
        recorded: recorder.take(),
        dispatch_time,
        wall_time,
        stopped_early: stopped,
    };
    let mut report = Report::build(
        options.scenario.name(),
        &options.target,
        &plan,
        &output,
        options.criteria,
    );
    let success = |name: &str| {
        report
            .endpoints
            .iter()
            .find(|e| e.name == name && e.requests > 0)
            .map(|e| e.success_rate)
    };
    report.auth = Some(AuthFigures {
        login_success_rate: success("login"),
        refresh_success_rate: success("refresh"),
        wrong_password_rejected_rate: success("login (wrong password)"),
    });
    // Steps a scenario does not take are left out of the report.
    report.endpoints.retain(|endpoint| endpoint.requests > 0);
    if let Some(gauge) = gauge {
        let figures = gauge.finish().await;
        report.cache_hit_rate = figures.cache_hit_rate;
        report.gateway = Some(figures);
    }
    report.judge(Vec::new());
    Ok(report)
}
