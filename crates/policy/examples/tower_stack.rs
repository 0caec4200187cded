//! Every policy of sekisho-policy as one tower stack around an HTTP handler, in the recommended
//! order, and a refusal turned into an HTTP answer (429, 503 or 504 with `Retry-After`).
//!
//! Run with `cargo run -p sekisho-policy --example tower_stack`.
// An example run by hand, not a request path: a bad request it builds itself may panic.
#![allow(clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use sekisho_policy::backoff::{Backoff, Jitter};
use sekisho_policy::breaker::BreakerConfig;
use sekisho_policy::budget::RetryBudget;
use sekisho_policy::concurrency::Settings;
use sekisho_policy::layers::{
    BulkheadLayer, CircuitBreakerLayer, ConcurrencyLimitLayer, PolicyError, RateLimitLayer,
    RetryLayer, TimeoutLayer,
};
use sekisho_policy::ratelimit::Limit;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// The application: any hyper-style `Request -> Response` service.
async fn handler(request: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(format!(
        "hello from {}",
        request.uri().path()
    )))
}

/// A refusal as the answer a client gets.
fn into_response(error: PolicyError<Infallible>) -> Response<String> {
    let status = match &error {
        PolicyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        PolicyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        PolicyError::CircuitOpen { .. } | PolicyError::BulkheadFull | PolicyError::Overloaded => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        PolicyError::Inner(never) => match *never {},
    };
    let mut response = Response::new(error.to_string());
    *response.status_mut() = status;
    if let Some(wait) = error.retry_after() {
        // Whole seconds, rounded up.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, seconds.into());
    }
    response
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let budget = Arc::new(RetryBudget::new(
        0.2,
        10,
        Duration::from_secs(10),
        Instant::now(),
    ));
    let service = ServiceBuilder::new()
        // 1. Rate limit: 3 requests per client, refilled at 1 per second.
        .layer(RateLimitLayer::new(
            Limit::TokenBucket {
                capacity: 3,
                refill_per_second: 1.0,
            },
            100_000,
            |request: &Request<String>| {
                request
                    .headers()
                    .get("x-client-id")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("anonymous")
                    .to_owned()
            },
        ))
        // 2. Adaptive concurrency limit of the whole service.
        .layer(ConcurrencyLimitLayer::new(Settings::default()))
        // 3. Circuit breaker: opens at 50 % failures over the last 60 s.
        .layer(CircuitBreakerLayer::new(BreakerConfig::default()))
        // 4. Bulkhead: 32 calls at once, 64 more waiting at most 100 ms.
        .layer(BulkheadLayer::new(32, 64, Duration::from_millis(100)))
        // 5. Retry: up to 3 attempts, at most 20 % extra load, backing off from 25 ms.
        .layer(RetryLayer::new(
            budget,
            Backoff::new(
                Duration::from_millis(25),
                Duration::from_secs(1),
                Jitter::Full,
            ),
            3,
        ))
        // 6. Timeout of each attempt.
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(service_fn(handler));

    for attempt in 1..=5 {
        let request = Request::builder()
            .uri("/orders")
            .header("x-client-id", "alice")
            .body(String::new())
            .expect("a valid request");
        let response = match service.clone().oneshot(request).await {
            Ok(response) => response,
            Err(error) => into_response(error),
        };
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(|seconds| format!(" (Retry-After: {seconds})"))
            .unwrap_or_default();
        println!(
            "request {attempt}: {} {}{retry_after}",
            response.status(),
            response.body()
        );
    }
}
