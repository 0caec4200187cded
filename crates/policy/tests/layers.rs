//! The tower layers driven through real services on tokio's paused clock.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sekisho_policy::backoff::{Backoff, Jitter};
use sekisho_policy::breaker::{BreakerConfig, State, Window};
use sekisho_policy::budget::RetryBudget;
use sekisho_policy::concurrency::Settings;
use sekisho_policy::layers::{
    BulkheadLayer, CircuitBreakerLayer, ConcurrencyLimitLayer, PolicyError, RateLimitLayer,
    RetryLayer, TimeoutLayer, WrapErrorLayer,
};
use sekisho_policy::ratelimit::Limit;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

/// The inner service's own error.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

/// An error with a cause.
#[derive(Debug)]
struct Caused(Boom);

impl std::fmt::Display for Caused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("it failed")
    }
}

impl std::error::Error for Caused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl sekisho_policy::layers::IntoPolicyError for Boom {
    type Inner = Boom;
    fn into_policy_error(self) -> PolicyError<Boom> {
        PolicyError::Inner(self)
    }
}

/// A hand-written tower service: fails while `failing` is set, counts its calls, and holds each
/// call until `gate` gives it a permit when a gate is set.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    gate: Option<Arc<Semaphore>>,
    delay: Duration,
}

impl Backend {
    fn failing() -> Self {
        let backend = Self::default();
        backend.failing.store(true, Ordering::SeqCst);
        backend
    }

    fn gated() -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let backend = Self {
            gate: Some(Arc::clone(&gate)),
            ..Self::default()
        };
        (backend, gate)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<R: Send + 'static> Service<R> for Backend {
    type Response = R;
    type Error = Boom;
    type Future = Pin<Box<dyn Future<Output = Result<R, Boom>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Boom>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let failing = self.failing.load(Ordering::SeqCst);
        let gate = self.gate.clone();
        let delay = self.delay;
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.acquire().await.unwrap().forget();
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if failing {
                Err(Boom)
            } else {
                Ok(request)
            }
        })
    }
}

/// Lets tasks spawned on the current-thread runtime run until they wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn breaker_config() -> BreakerConfig {
    BreakerConfig {
        window: Window::Calls(4),
        minimum_calls: 4,
        failure_rate_threshold: 0.5,
        open_for: Duration::from_secs(10),
        half_open_calls: 1,
        ..BreakerConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_failures_and_rejects_without_calling_inner() {
    let backend = Backend::failing();
    let layer = CircuitBreakerLayer::new(breaker_config());
    let breaker = Arc::clone(layer.breaker());
    let service = layer.layer(backend.clone());

    for _ in 0..4 {
        let result = service.clone().oneshot(()).await;
        assert_eq!(result, Err(PolicyError::Inner(Boom)));
    }
    assert_eq!(backend.calls(), 4);
    assert_eq!(
        breaker.state(Instant::now().into_std()),
        State::Open,
        "4 failures of 4 calls"
    );

    // Open: refused at once with the time left, and the backend is not called.
    let result = service.clone().oneshot(()).await;
    assert_eq!(
        result,
        Err(PolicyError::CircuitOpen {
            retry_after: Duration::from_secs(10)
        })
    );
    tokio::time::advance(Duration::from_secs(4)).await;
    let result = service.clone().oneshot(()).await;
    assert_eq!(
        result.unwrap_err().retry_after(),
        Some(Duration::from_secs(6))
    );
    assert_eq!(backend.calls(), 4);

    // After `open_for` one probe passes; the backend has recovered, so the circuit closes.
    tokio::time::advance(Duration::from_secs(6)).await;
    backend.failing.store(false, Ordering::SeqCst);
    assert_eq!(service.clone().oneshot(()).await, Ok(()));
    assert_eq!(backend.calls(), 5);
    assert_eq!(breaker.state(Instant::now().into_std()), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_judges_with_the_classifier_and_sees_timeouts_from_further_in() {
    // Responses are "status codes"; a 5xx or a timeout is a failure, a 4xx is not.
    let status = Arc::new(AtomicUsize::new(404));
    let backend = {
        let status = Arc::clone(&status);
        service_fn(move |slow: bool| {
            let status = status.load(Ordering::SeqCst);
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, Infallible>(status)
            }
        })
    };
    let layer = CircuitBreakerLayer::new(breaker_config()).classify(
        |result: &Result<usize, PolicyError<Infallible>>| match result {
            Ok(status) => *status >= 500,
            Err(_) => true,
        },
    );
    let breaker = Arc::clone(layer.breaker());
    let service = ServiceBuilder::new()
        .layer(layer)
        .layer(TimeoutLayer::new(Duration::from_millis(100)))
        .service(backend);

    for _ in 0..4 {
        assert_eq!(service.clone().oneshot(false).await, Ok(404));
    }
    assert_eq!(breaker.state(Instant::now().into_std()), State::Closed);
    // One 503 and one timeout: half the window of four failed, which opens it.
    status.store(503, Ordering::SeqCst);
    assert_eq!(service.clone().oneshot(false).await, Ok(503));
    assert_eq!(breaker.state(Instant::now().into_std()), State::Closed);
    assert_eq!(
        service.clone().oneshot(true).await,
        Err(PolicyError::Timeout)
    );
    assert_eq!(breaker.state(Instant::now().into_std()), State::Open);
    let figures = breaker.figures(Instant::now().into_std());
    assert_eq!((figures.calls, figures.failures), (4, 2));
    assert!(matches!(
        service.oneshot(false).await,
        Err(PolicyError::CircuitOpen { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_gives_its_place_back() {
    let (backend, gate) = Backend::gated();
    let backend = Backend {
        failing: Arc::new(AtomicBool::new(true)),
        ..backend
    };
    let layer = CircuitBreakerLayer::new(breaker_config());
    let breaker = Arc::clone(layer.breaker());
    let mut service = layer.layer(backend.clone());
    gate.add_permits(4);
    for _ in 0..4 {
        let _ = ServiceExt::<()>::ready(&mut service)
            .await
            .unwrap()
            .call(())
            .await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(breaker.state(Instant::now().into_std()), State::HalfOpen);

    // The only probe is made, then its caller goes away before the answer.
    let probe = ServiceExt::<()>::ready(&mut service)
        .await
        .unwrap()
        .call(());
    assert!(matches!(
        ServiceExt::<()>::ready(&mut service)
            .await
            .unwrap()
            .call(())
            .await,
        Err(PolicyError::CircuitOpen { .. })
    ));
    drop(probe);
    // Its place is free again: the next call is the probe.
    backend.failing.store(false, Ordering::SeqCst);
    gate.add_permits(1);
    assert_eq!(
        ServiceExt::<()>::ready(&mut service)
            .await
            .unwrap()
            .call(())
            .await,
        Ok(())
    );
    assert_eq!(breaker.state(Instant::now().into_std()), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_refuses_beyond_its_capacity() {
    let (backend, gate) = Backend::gated();
    let layer = BulkheadLayer::new(2, 0, Duration::ZERO);
    let bulkhead = Arc::clone(layer.bulkhead());
    let service = layer.layer(backend.clone());

    let held: Vec<_> = (0..2)
        .map(|i| tokio::spawn(service.clone().oneshot(i)))
        .collect();
    settle().await;
    assert_eq!(bulkhead.usage().in_use, 2);
    assert_eq!(backend.calls(), 2);

    // Both slots taken, no queue: refused at once, the backend never sees it.
    assert_eq!(
        service.clone().oneshot(2).await,
        Err(PolicyError::BulkheadFull)
    );
    assert_eq!(backend.calls(), 2);
    assert_eq!(bulkhead.usage().rejected, 1);

    // The held calls finish and give their slots back.
    gate.add_permits(2);
    for call in held {
        call.await.unwrap().unwrap();
    }
    assert_eq!(bulkhead.usage().in_use, 0);
    gate.add_permits(1);
    assert_eq!(service.clone().oneshot(3).await, Ok(3));
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_queue_waits_at_most_max_wait() {
    let (backend, gate) = Backend::gated();
    let layer = BulkheadLayer::new(1, 1, Duration::from_millis(50));
    let bulkhead = Arc::clone(layer.bulkhead());
    let service = layer.layer(backend.clone());

    let held = tokio::spawn(service.clone().oneshot(0));
    settle().await;
    // The second waits in the queue; the third finds the queue full.
    let queued = tokio::spawn(service.clone().oneshot(1));
    settle().await;
    assert_eq!(bulkhead.usage().queued, 1);
    assert_eq!(
        service.clone().oneshot(2).await,
        Err(PolicyError::BulkheadFull)
    );
    // No slot within 50 ms: the queued call gives up, never having reached the backend.
    let started = Instant::now();
    assert_eq!(queued.await.unwrap(), Err(PolicyError::BulkheadFull));
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(backend.calls(), 1);
    assert_eq!(bulkhead.usage().queued, 0);

    // A slot that comes free in time goes to the queued call.
    let queued = tokio::spawn(service.clone().oneshot(3));
    settle().await;
    gate.add_permits(2);
    assert_eq!(held.await.unwrap(), Ok(0));
    assert_eq!(queued.await.unwrap(), Ok(3));
}

#[tokio::test(start_paused = true)]
async fn a_service_dropped_while_queued_leaves_the_queue() {
    let (backend, gate) = Backend::gated();
    let layer = BulkheadLayer::new(1, 1, Duration::from_secs(5));
    let bulkhead = Arc::clone(layer.bulkhead());
    let service = layer.layer(backend);

    let held = tokio::spawn(service.clone().oneshot(0));
    settle().await;
    // A caller queues, then goes away (a client disconnecting) while it waits.
    let waiting = tokio::spawn(service.clone().oneshot(1));
    settle().await;
    assert_eq!(bulkhead.usage().queued, 1);
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(
        bulkhead.usage().queued,
        0,
        "its place in the queue is given back at once"
    );

    gate.add_permits(1);
    assert_eq!(held.await.unwrap(), Ok(0));
    settle().await;
    let usage = bulkhead.usage();
    assert_eq!((usage.in_use, usage.queued), (0, 0));
    // The queue is usable again.
    let _held = tokio::spawn(service.clone().oneshot(2));
    settle().await;
    let _queued = tokio::spawn(service.clone().oneshot(3));
    settle().await;
    assert_eq!(bulkhead.usage().queued, 1);
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_refuses_beyond_the_quota_of_each_key() {
    let backend = Backend::default();
    let layer = RateLimitLayer::new(
        Limit::FixedWindow {
            limit: 3,
            window: Duration::from_secs(1),
        },
        1000,
        |client: &&'static str| (*client).to_owned(),
    );
    let service = layer.layer(backend.clone());

    for _ in 0..3 {
        assert_eq!(service.clone().oneshot("alice").await, Ok("alice"));
    }
    let refused = service.clone().oneshot("alice").await.unwrap_err();
    let PolicyError::RateLimited(decision) = refused else {
        panic!("expected a rate limit, got {refused:?}");
    };
    assert!(!decision.allowed);
    assert_eq!((decision.limit, decision.remaining), (3, 0));
    assert!(decision.retry_after > Duration::ZERO);
    assert!(decision.retry_after <= Duration::from_secs(1));
    assert_eq!(backend.calls(), 3, "the refused request never reached it");

    // Another key has its own quota.
    assert_eq!(service.clone().oneshot("bob").await, Ok("bob"));
    // A new window, a new quota.
    tokio::time::advance(decision.retry_after).await;
    assert_eq!(service.clone().oneshot("alice").await, Ok("alice"));
    assert_eq!(backend.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_fires_at_its_deadline() {
    let slow = Backend {
        delay: Duration::from_secs(10),
        ..Backend::default()
    };
    let service = TimeoutLayer::new(Duration::from_millis(100)).layer(slow);
    let started = Instant::now();
    assert_eq!(service.oneshot(()).await, Err(PolicyError::Timeout));
    assert_eq!(started.elapsed(), Duration::from_millis(100));

    let quick = Backend {
        delay: Duration::from_millis(99),
        ..Backend::default()
    };
    let service = TimeoutLayer::new(Duration::from_millis(100)).layer(quick);
    assert_eq!(service.oneshot(()).await, Ok(()));
    // The inner service's own error passes through.
    let service = TimeoutLayer::new(Duration::from_millis(100)).layer(Backend::failing());
    assert_eq!(service.oneshot(()).await, Err(PolicyError::Inner(Boom)));
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_limit_sheds_beyond_its_limit_and_samples_latency() {
    let (backend, gate) = Backend::gated();
    let layer = ConcurrencyLimitLayer::new(Settings {
        initial_limit: 2,
        min_limit: 1,
        max_limit: 10,
        min_samples: 1,
        window: Duration::from_millis(10),
        ..Settings::default()
    });
    let limit = Arc::clone(layer.limit());
    let service = layer.layer(backend.clone());

    let held: Vec<_> = (0..2)
        .map(|i| tokio::spawn(service.clone().oneshot(i)))
        .collect();
    settle().await;
    assert_eq!(limit.usage().in_flight, 2);
    assert_eq!(
        service.clone().oneshot(2).await,
        Err(PolicyError::Overloaded)
    );
    assert_eq!(backend.calls(), 2);
    assert_eq!(limit.usage().shed, 1);

    tokio::time::advance(Duration::from_millis(20)).await;
    gate.add_permits(2);
    for call in held {
        call.await.unwrap().unwrap();
    }
    let usage = limit.usage();
    assert_eq!(usage.in_flight, 0);
    assert_eq!(usage.windows, 1, "the completed calls were sampled");
    assert_eq!(usage.long_latency, Duration::from_millis(20));
}

fn retry_backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(1),
        Jitter::None,
    )
}

/// A service failing its first `failures` calls.
fn flaky(
    failures: usize,
) -> (
    Arc<AtomicUsize>,
    impl Service<&'static str, Response = &'static str, Error = Boom, Future: Send> + Clone,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let service = service_fn(move |request: &'static str| {
        let call = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if call < failures {
                Err(Boom)
            } else {
                Ok(request)
            }
        }
    });
    (calls, service)
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_within_the_budget() {
    let budget = Arc::new(RetryBudget::new(
        0.0,
        10,
        Duration::from_secs(10),
        Instant::now().into_std(),
    ));
    let (calls, backend) = flaky(2);
    let service = RetryLayer::new(Arc::clone(&budget), retry_backoff(), 3).layer(backend);
    let started = Instant::now();
    assert_eq!(service.clone().oneshot("get").await, Ok("get"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // 100 ms before the first retry, 200 ms before the second.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    let figures = budget.figures(Instant::now().into_std());
    assert_eq!((figures.requests, figures.retries), (1, 2));

    // Out of attempts: the last failure is returned.
    let (calls, backend) = flaky(5);
    let service = RetryLayer::new(Arc::clone(&budget), retry_backoff(), 3).layer(backend);
    assert_eq!(service.oneshot("get").await, Err(PolicyError::Inner(Boom)));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn no_retry_without_budget_or_against_the_policy() {
    let empty = Arc::new(RetryBudget::new(
        0.0,
        0,
        Duration::from_secs(10),
        Instant::now().into_std(),
    ));
    let (calls, backend) = flaky(1);
    let service = RetryLayer::new(empty, retry_backoff(), 3).layer(backend);
    assert_eq!(service.oneshot("get").await, Err(PolicyError::Inner(Boom)));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the budget is spent");

    let budget = Arc::new(RetryBudget::new(
        0.0,
        10,
        Duration::from_secs(10),
        Instant::now().into_std(),
    ));
    let (calls, backend) = flaky(1);
    let layer = RetryLayer::new(budget, retry_backoff(), 3).policy(
        |request: &&'static str, result: &Result<&'static str, PolicyError<Boom>>| {
            *request != "post" && result.is_err()
        },
    );
    let service = layer.layer(backend);
    assert_eq!(
        service.clone().oneshot("post").await,
        Err(PolicyError::Inner(Boom))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not idempotent: no retry");
    assert_eq!(service.oneshot("get").await, Ok("get"));
}

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>(_: &T) {}
fn assert_send<T: Send>(_: &T) {}

#[tokio::test(start_paused = true)]
async fn the_whole_stack_has_one_flat_error_and_fits_hyper_and_axum() {
    let budget = Arc::new(RetryBudget::new(
        0.2,
        10,
        Duration::from_secs(10),
        Instant::now().into_std(),
    ));
    let service = ServiceBuilder::new()
        .layer(RateLimitLayer::new(
            Limit::TokenBucket {
                capacity: 2,
                refill_per_second: 1.0,
            },
            1000,
            |request: &http::Request<String>| request.uri().path().to_owned(),
        ))
        .layer(ConcurrencyLimitLayer::new(Settings::default()))
        .layer(CircuitBreakerLayer::new(BreakerConfig::default()))
        .layer(BulkheadLayer::new(8, 8, Duration::from_millis(50)))
        .layer(RetryLayer::new(budget, retry_backoff(), 2))
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(service_fn(|request: http::Request<String>| async move {
            Ok::<_, Infallible>(http::Response::new(request.into_body()))
        }));
    assert_send_sync_clone(&service);
    let request = || {
        http::Request::builder()
            .uri("/hello")
            .body("hi".to_owned())
            .unwrap()
    };
    let future = service.clone().oneshot(request());
    assert_send(&future);
    // The error type is PolicyError<Infallible>, however many layers.
    let response: Result<http::Response<String>, PolicyError<Infallible>> = future.await;
    assert_eq!(response.unwrap().into_body(), "hi");
    assert!(service.clone().oneshot(request()).await.is_ok());
    let refused = service.oneshot(request()).await.unwrap_err();
    assert!(refused.is_refusal());
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_foreign_error_is_wrapped_innermost() {
    // `fmt::Error` does not implement IntoPolicyError: WrapErrorLayer makes it one.
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .layer(WrapErrorLayer::new())
        .service(service_fn(|fail: bool| async move {
            if fail {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }));
    assert_eq!(service.clone().oneshot(false).await, Ok(()));
    assert_eq!(
        service.oneshot(true).await,
        Err(PolicyError::Inner(std::fmt::Error))
    );
}

#[test]
fn errors_display_and_report_their_source() {
    use std::error::Error as _;

    let timeout: PolicyError<Boom> = PolicyError::Timeout;
    assert_eq!(timeout.to_string(), "timed out");
    assert!(!timeout.is_refusal());
    let open: PolicyError<Boom> = PolicyError::CircuitOpen {
        retry_after: Duration::from_millis(1500),
    };
    assert_eq!(open.to_string(), "circuit open, retry after 1.5s");
    assert_eq!(open.retry_after(), Some(Duration::from_millis(1500)));
    assert_eq!(
        PolicyError::<Boom>::BulkheadFull.to_string(),
        "bulkhead full"
    );
    assert_eq!(
        PolicyError::<Boom>::Overloaded.to_string(),
        "overloaded: concurrency limit reached"
    );
    // Transparent: the inner error's message, and its source.
    let inner = PolicyError::Inner(Caused(Boom));
    assert_eq!(inner.to_string(), "it failed");
    assert_eq!(inner.source().unwrap().to_string(), "boom");
    assert!(PolicyError::<Boom>::Timeout.source().is_none());
    assert_eq!(
        PolicyError::Inner(Boom).map_inner(|_| 7).into_inner(),
        Some(7)
    );
}
