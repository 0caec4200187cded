//! The login scenarios against a small server that keeps CONTRACT.md's `/auth` endpoints
//! (login, me, refresh with rotation, logout) and one route that wants a bearer token: each
//! scenario runs end to end at a small scale, 100× faster think times, and passes.
// Test code: a failed step panics the test, as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::http1_server;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use sekisho_load::scenario::{self, Scenario, ScenarioOptions};
use sekisho_load::{Progress, Report};

#[derive(Default)]
struct Sessions {
    next: u64,
    /// Access token → user.
    access: HashMap<String, String>,
    /// Unspent refresh token → user.
    refresh: HashMap<String, String>,
}

impl Sessions {
    fn issue(&mut self, user: &str) -> serde_json::Value {
        self.next += 1;
        let (access, refresh) = (format!("a{}", self.next), format!("r{}", self.next));
        self.access.insert(access.clone(), user.to_owned());
        self.refresh.insert(refresh.clone(), user.to_owned());
        serde_json::json!({
            "access_token": access, "refresh_token": refresh, "token_type": "Bearer",
            "expires_in": 300,
            "user": {"id": 1, "username": user, "roles": [], "permissions": []},
        })
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn unauthenticated() -> Response<Full<Bytes>> {
    json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"error": {"code": "UNAUTHENTICATED", "message": "no"}}),
    )
}

async fn answer(
    sessions: Arc<Mutex<Sessions>>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let bearer = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut sessions = sessions.lock().unwrap();
    let user = bearer.and_then(|token| sessions.access.get(&token).cloned().map(|u| (token, u)));
    match (method.as_str(), path.as_str()) {
        ("POST", "/auth/login") => {
            let name = body["username"].as_str().unwrap_or("");
            if body["password"] == "pw" && name.starts_with("u") {
                json(StatusCode::OK, &sessions.issue(name))
            } else {
                unauthenticated()
            }
        }
        ("POST", "/auth/refresh") => {
            let token = body["refresh_token"].as_str().unwrap_or("");
            match sessions.refresh.remove(token) {
                Some(name) => json(StatusCode::OK, &sessions.issue(&name)),
                None => unauthenticated(),
            }
        }
        ("GET", "/auth/me") => match user {
            Some((_, name)) => json(StatusCode::OK, &serde_json::json!({"username": name})),
            None => unauthenticated(),
        },
        ("POST", "/auth/logout") => match user {
            Some((token, _)) => {
                sessions.access.remove(&token);
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            None => unauthenticated(),
        },
        ("GET", "/api/orders") => match user {
            Some(_) => json(StatusCode::OK, &serde_json::json!({"orders": []})),
            None => unauthenticated(),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": {"code": "NO_ROUTE"}}),
        ),
    }
}

async fn auth_server() -> SocketAddr {
    let sessions = Arc::new(Mutex::new(Sessions::default()));
    let (address, _) = http1_server(move |request| answer(Arc::clone(&sessions), request)).await;
    address
}

async fn run(scenario: Scenario) -> Report {
    run_scaled(scenario, 5, 0.01).await
}

/// `scenario` with `users` for 2 s, the seeds' think times multiplied by `think_scale`.
async fn run_scaled(scenario: Scenario, users: usize, think_scale: f64) -> Report {
    let address = auth_server().await;
    let mut options = ScenarioOptions::new(scenario, &format!("http://{address}"));
    options.users = Some(users);
    options.duration = Duration::from_secs(2);
    options.timeout = Duration::from_secs(5);
    options.think_scale = think_scale;
    options.username = "u{id}".to_owned();
    options.password = "pw".to_owned();
    options.progress = Progress::Off;
    let report = scenario::run(&options, std::future::pending())
        .await
        .unwrap();
    println!("{}", report.summary());
    report
}

fn requests(report: &Report, name: &str) -> u64 {
    report
        .endpoints
        .iter()
        .find(|e| e.name == name)
        .map_or(0, |e| e.requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rush_walks_the_whole_journey_and_passes() {
    let report = run(Scenario::LoginRush).await;
    assert!(report.pass, "{}", report.summary());
    for step in ["login", "me", "work GET /api/orders", "refresh", "logout"] {
        assert!(
            requests(&report, step) > 0,
            "no {step}: {}",
            report.summary()
        );
    }
    assert!(report.endpoints.iter().all(|e| e.success_rate == 1.0));
    assert_eq!(report.model, "closed");
    let auth = report.auth.unwrap();
    assert_eq!(auth.login_success_rate, Some(1.0));
    assert_eq!(auth.refresh_success_rate, Some(1.0));
    assert_eq!(auth.wrong_password_rejected_rate, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_storm_refreshes_every_session_once_inside_the_window() {
    let report = run(Scenario::RefreshStorm).await;
    assert!(report.pass, "{}", report.summary());
    for step in ["login", "refresh", "me", "logout"] {
        assert_eq!(requests(&report, step), 5, "{step}: {}", report.summary());
    }
    // The refreshes fall in the middle half of the 2 s run.
    let refresh = report
        .endpoints
        .iter()
        .find(|e| e.name == "refresh")
        .unwrap();
    let seconds: Vec<u64> = refresh
        .timeline
        .iter()
        .filter(|p| p.scheduled > 0)
        .map(|p| p.t)
        .collect();
    assert!(seconds.iter().all(|t| *t <= 1), "{seconds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_errors_expects_401_for_the_wrong_passwords_and_passes() {
    let report = run(Scenario::MixedErrors).await;
    assert!(report.pass, "{}", report.summary());
    let wrong = report
        .endpoints
        .iter()
        .find(|e| e.name == "login (wrong password)")
        .unwrap();
    assert!(wrong.requests > 0);
    assert_eq!(wrong.statuses.get("401"), Some(&wrong.requests));
    assert_eq!(report.auth.unwrap().wrong_password_rejected_rate, Some(1.0));
    let logins = requests(&report, "login");
    // About 30 % of the attempts use a wrong password.
    let share = wrong.requests as f64 / (wrong.requests + logins) as f64;
    assert!((0.1..0.5).contains(&share), "wrong share {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_errors_users_start_spread_over_a_think_time_not_in_one_burst() {
    // The seeds' think times (1–3 s): 20 users starting at once would all try to log in within
    // the first second; spread over 0–3 s, about a third of them do.
    let report = run_scaled(Scenario::MixedErrors, 20, 1.0).await;
    let first_second: u64 = report
        .endpoints
        .iter()
        .filter(|e| e.name.starts_with("login"))
        .filter_map(|e| e.timeline.first())
        .map(|p| p.scheduled)
        .sum();
    assert!(
        first_second < 20,
        "{first_second} of 20 users tried to log in within the first second"
    );
}
