//! The generator measured against servers whose behaviour is known: a fixed 50 ms delay, and a
//! server that stalls for one second mid-run (which the open model must show and a closed model
//! hides).
// Test code: a failed step panics the test, as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{chaos, http1_server, ok};
use sekisho_load::{
    Criteria, Dispatch, Endpoint, Generator, HttpVersion, LoadPlan, Model, Progress, Report,
    RunOutput,
};

fn plan(address: SocketAddr, model: Model, duration: Duration) -> LoadPlan {
    LoadPlan {
        endpoints: vec![Endpoint::get(&format!("http://{address}/known")).unwrap()],
        model,
        duration,
        timeout: Duration::from_secs(10),
        http: HttpVersion::Http1,
        connections: 1000,
        progress: Progress::Off,
        dispatch: Dispatch::Shared,
    }
}

/// The judged report of `output`, a run of `plan`.
fn judged(plan: &LoadPlan, output: &RunOutput) -> Report {
    let mut report = Report::build("get", "test", plan, output, Criteria::default());
    report.judge(Vec::new());
    report
}

async fn run(plan: LoadPlan) -> Report {
    let generator = Generator::new(plan.clone()).unwrap();
    let output = generator.run(std::future::pending()).await;
    judged(&plan, &output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_fixed_rate_the_p50_is_the_servers_50_ms_and_the_rate_is_kept() {
    let address = chaos(Duration::from_millis(50)).await;
    let rate = 100.0;
    let report = run(plan(
        address,
        Model::Open {
            rate,
            max_outstanding: 1000,
        },
        Duration::from_secs(3),
    ))
    .await;
    println!("{}", report.summary());
    assert_eq!(report.requests, 300);
    assert_eq!(report.statuses.get("200"), Some(&300));
    // The server sleeps 50 ms on a millisecond timer; the rest is the exchange itself and the
    // dispatcher's own wake-up, both charged to the request (its clock starts when it was due).
    assert!(
        (50.0..=58.0).contains(&report.p50_ms),
        "p50 {} ms (service time {} ms), not within a few ms of 50",
        report.p50_ms,
        report.endpoints[0].service.p50_ms
    );
    for (what, achieved) in [("sent", report.sent_rps), ("answered", report.rps)] {
        assert!(
            (achieved - rate).abs() <= rate * 0.02,
            "{what} {achieved}/s, asked {rate}/s"
        );
    }
    assert_eq!(report.error_rate, 0.0);
    assert!(report.pass, "{:?}", report.checks);
    // The timeline covers the run, one point a second, each with its share of the arrivals.
    let timeline = &report.endpoints[0].timeline;
    assert!(timeline.len() >= 3);
    assert!(timeline[..3].iter().all(|point| point.scheduled == 100));
}

/// An HTTP/1.1 server answering at once, except while `open` is false: then every request
/// waits until it turns true again.
async fn stalling_server(open: tokio::sync::watch::Receiver<bool>) -> SocketAddr {
    let (address, _) = http1_server(move |_request| {
        let mut open = open.clone();
        async move {
            let _ = open.wait_for(|open| *open).await;
            ok()
        }
    })
    .await;
    address
}

/// Runs `model` for 3 s against a server that stalls from 1 s to 2 s.
async fn run_with_a_stall(model: Model) -> Report {
    run_with_a_stall_dispatched(model, Dispatch::Shared).await
}

async fn run_with_a_stall_dispatched(model: Model, dispatch: Dispatch) -> Report {
    let (gate, open) = tokio::sync::watch::channel(true);
    let address = stalling_server(open).await;
    let mut plan = plan(address, model, Duration::from_secs(3));
    plan.dispatch = dispatch;
    let generator = Generator::new(plan.clone()).unwrap();
    let start = generator.start();
    // The stall is the scenario itself, placed on the run's clock.
    let stall = tokio::spawn(async move {
        tokio::time::sleep_until(start + Duration::from_secs(1)).await;
        gate.send_replace(false);
        tokio::time::sleep_until(start + Duration::from_secs(2)).await;
        gate.send_replace(true);
    });
    let output = generator.run(std::future::pending()).await;
    stall.await.unwrap();
    let report = judged(&plan, &output);
    println!("{}", report.summary());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_in_the_open_models_p99_and_hides_in_a_closed_models() {
    let open = run_with_a_stall(Model::Open {
        rate: 200.0,
        max_outstanding: 1000,
    })
    .await;
    // A third of the arrivals fell due during the stall, waiting up to the whole second.
    assert_eq!(open.requests, 600);
    assert_eq!(open.errors, 0);
    assert!(open.p99_ms >= 900.0, "open p99 {} ms", open.p99_ms);
    assert!(open.max_ms >= 950.0, "open max {} ms", open.max_ms);
    assert!(!open.pass, "a 1 s stall must fail p99 < 1 s… or p95");

    // Users that think 1 ms between requests: enough requests for a p99, without taking the
    // cores from the tests running beside this one.
    let closed = run_with_a_stall(Model::Closed {
        users: 2,
        think_min: Duration::from_millis(1),
        think_max: Duration::from_millis(1),
    })
    .await;
    // Each closed user waits out the stall in one request and sends nothing meanwhile: 2 slow
    // requests among many, below the p99.
    assert!(
        closed.requests >= 400,
        "too few requests ({}) for the stall to hide below the p99",
        closed.requests
    );
    assert!(closed.max_ms >= 900.0, "closed max {} ms", closed.max_ms);
    assert!(closed.p99_ms < 100.0, "closed p99 {} ms", closed.p99_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_runs_over_prior_knowledge() {
    let address = chaos(Duration::ZERO).await;
    let mut plan = plan(
        address,
        Model::Open {
            rate: 50.0,
            max_outstanding: 100,
        },
        Duration::from_secs(1),
    );
    plan.http = HttpVersion::Http2;
    let report = run(plan).await;
    assert_eq!(
        report.statuses.get("200"),
        Some(&50),
        "{}",
        report.summary()
    );
    assert_eq!(report.http, "http2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_outstanding_bound_are_unsent_errors_not_a_queue() {
    let address = chaos(Duration::from_millis(300)).await;
    let report = run(plan(
        address,
        Model::Open {
            rate: 20.0,
            max_outstanding: 2,
        },
        Duration::from_secs(1),
    ))
    .await;
    // 20 due, 2 at a time for 300 ms each: most are never sent, and the run fails.
    assert_eq!(report.requests, 20);
    assert!(report.unsent >= 10, "{}", report.summary());
    assert_eq!(report.errors_by_kind.get("unsent"), Some(&report.unsent));
    assert!(!report.pass);
}

#[tokio::test]
async fn a_server_that_is_not_there_is_counted_as_connect_errors() {
    // A port nobody listens on: bind one, then close it.
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let report = run(plan(
        address,
        Model::Open {
            rate: 10.0,
            max_outstanding: 10,
        },
        Duration::from_millis(500),
    ))
    .await;
    assert_eq!(report.requests, 5);
    assert_eq!(report.errors_by_kind.get("connect"), Some(&5));
    assert_eq!(report.error_rate, 1.0);
    assert!(!report.pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_pool_is_bounded_and_waiting_for_it_counts_as_latency() {
    // A server that answers in 100 ms and counts the connections it accepts.
    let (address, accepted) = http1_server(|_request| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ok()
    })
    .await;
    let mut plan = plan(
        address,
        Model::Open {
            rate: 40.0,
            max_outstanding: 100,
        },
        Duration::from_secs(1),
    );
    plan.connections = 2;
    let report = run(plan).await;
    // 40 requests, 2 at a time for 100 ms each: 2 s of work arriving in 1 s. Nothing is lost,
    // and the queue for a connection shows in the latency (the last waits about a second).
    assert_eq!(
        report.statuses.get("200"),
        Some(&40),
        "{}",
        report.summary()
    );
    assert!(report.max_ms >= 800.0, "max {} ms", report.max_ms);
    assert!(report.endpoints[0].service.p50_ms >= 100.0);
    let connections = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&connections),
        "{connections} connections for a pool of 2"
    );
}

/// A server answering at once over keep-alive HTTP/1.1, counting the connections it accepts.
async fn counting_server() -> (SocketAddr, Arc<AtomicU64>) {
    http1_server(|_request| async { ok() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_sends_every_request_on_one_connection() {
    let (address, accepted) = counting_server().await;
    let report = run(plan(
        address,
        Model::Closed {
            users: 1,
            think_min: Duration::from_millis(1),
            think_max: Duration::from_millis(1),
        },
        Duration::from_millis(500),
    ))
    .await;
    assert!(report.requests >= 20, "{}", report.summary());
    assert_eq!(report.errors, 0, "{}", report.summary());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "{} requests one after the other must share one keep-alive connection",
        report.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_run_keeps_to_its_connections_whatever_the_number_of_requests() {
    let (address, accepted) = counting_server().await;
    let mut plan = plan(
        address,
        Model::Open {
            rate: 400.0,
            max_outstanding: 1000,
        },
        Duration::from_millis(500),
    );
    plan.connections = 4;
    let report = run(plan).await;
    assert_eq!(
        report.statuses.get("200"),
        Some(&200),
        "{}",
        report.summary()
    );
    let connections = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&connections),
        "{connections} connections for 200 requests and a pool of 4"
    );
}

/// A raw HTTP/1.1 server that answers one request per connection as if it kept the connection
/// (no `Connection: close`), then closes it: every pooled connection is dead by the time it is
/// reused.
async fn closing_server() -> (SocketAddr, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (address, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_not_reused_and_costs_no_request() {
    let (address, accepted) = closing_server().await;
    let report = run(plan(
        address,
        Model::Closed {
            users: 1,
            think_min: Duration::from_millis(10),
            think_max: Duration::from_millis(10),
        },
        Duration::from_millis(500),
    ))
    .await;
    assert!(report.requests >= 10, "{}", report.summary());
    assert_eq!(report.errors, 0, "{}", report.summary());
    assert_eq!(accepted.load(Ordering::SeqCst), report.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_per_connection_sends_every_arrival_on_its_own_connections() {
    let (address, accepted) = counting_server().await;
    let mut plan = plan(
        address,
        Model::Open {
            rate: 400.0,
            max_outstanding: 1000,
        },
        Duration::from_millis(500),
    );
    plan.connections = 4;
    plan.dispatch = Dispatch::PerConnection;
    let report = run(plan).await;
    assert_eq!(
        report.statuses.get("200"),
        Some(&200),
        "{}",
        report.summary()
    );
    assert_eq!(report.model, "open");
    // Each of the four tasks made its one connection and kept it.
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_per_connection_still_charges_a_stall_to_every_request_due_during_it() {
    let report = run_with_a_stall_dispatched(
        Model::Open {
            rate: 200.0,
            max_outstanding: 1000,
        },
        Dispatch::PerConnection,
    )
    .await;
    assert_eq!(report.requests, 600);
    assert_eq!(report.errors, 0, "{}", report.summary());
    // Latency runs from the intended time: the requests held back behind the stalled ones on
    // their connection wait for the end of the stall too.
    assert!(report.p99_ms >= 900.0, "p99 {} ms", report.p99_ms);
    assert!(report.p95_ms >= 500.0, "p95 {} ms", report.p95_ms);
}

#[tokio::test]
async fn a_task_per_connection_is_refused_for_h2_and_closed_users() {
    let address: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut h2 = plan(
        address,
        Model::Open {
            rate: 10.0,
            max_outstanding: 10,
        },
        Duration::from_secs(1),
    );
    h2.http = HttpVersion::Http2;
    h2.dispatch = Dispatch::PerConnection;
    assert!(Generator::new(h2).is_err());
    let mut closed = plan(
        address,
        Model::Closed {
            users: 1,
            think_min: Duration::ZERO,
            think_max: Duration::ZERO,
        },
        Duration::from_secs(1),
    );
    closed.dispatch = Dispatch::PerConnection;
    assert!(Generator::new(closed).is_err());
}
