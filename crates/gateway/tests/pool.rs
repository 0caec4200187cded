//! The gateway's keep-alive pools of HTTP/1.1 connections to targets, against a real upstream
//! over real sockets that counts the connections it accepts and sees closed.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sekisho_testkit::{get, InProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

/// An HTTP/1.1 upstream answering `200 ok` to every request head, on keep-alive connections.
struct Counting {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// One message per connection that ended (the peer closed it, or the upstream did).
    ended: mpsc::UnboundedReceiver<()>,
    /// One message per request head received, before it is answered.
    arrived: mpsc::UnboundedReceiver<()>,
    /// Each answer waits for a permit of its own (`gated_upstream`); otherwise unbounded.
    gate: Arc<Semaphore>,
}

/// Waits (≤ 10 s) for `count` messages on `events`; `what` names them in the panic.
async fn events(events: &mut mpsc::UnboundedReceiver<()>, count: usize, what: &str) {
    for seen in 0..count {
        tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: {seen} of {count} within 10 s"))
            .unwrap();
    }
}

/// Like `counting_upstream(false)`, but every answer waits for a permit added to `gate`: the
/// test decides when requests in flight are answered.
async fn gated_upstream() -> Counting {
    start_counting(false, Arc::new(Semaphore::new(0))).await
}

/// `close_after_answer`: the upstream closes each connection right after its first answer,
/// without saying so (no `Connection: close`), as a server whose keep-alive timeout is shorter
/// than the gateway's does.
async fn counting_upstream(close_after_answer: bool) -> Counting {
    start_counting(
        close_after_answer,
        Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
    )
    .await
}

async fn start_counting(close_after_answer: bool, gate: Arc<Semaphore>) -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let counter = Arc::clone(&accepted);
    let permits = Arc::clone(&gate);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let ended_tx = ended_tx.clone();
            let arrived_tx = arrived_tx.clone();
            let gate = Arc::clone(&permits);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let read = stream.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        break;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    let mut answered = false;
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        let _ = arrived_tx.send(());
                        gate.acquire().await.unwrap().forget();
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            break;
                        }
                        answered = true;
                    }
                    if answered && close_after_answer {
                        break;
                    }
                }
                drop(stream);
                let _ = ended_tx.send(());
            });
        }
    });
    Counting {
        address,
        accepted,
        ended,
        arrived,
        gate,
    }
}

async fn gateway(target: SocketAddr, upstream_extra: &str) -> InProcess {
    InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.up]\ntargets = [\"{target}\"]\n{upstream_extra}\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\n"
    ))
    .await
}

/// Open connections waiting in the pool of the one target.
fn idle(gateway: &InProcess) -> usize {
    idle_of(&gateway.gateway)
}

fn idle_of(gateway: &sekisho_gateway::Gateway) -> usize {
    gateway.upstreams()[0].targets[0].idle_connections.unwrap()
}

/// Waits until the pool of the one target holds `count` open idle connections (bounded).
async fn until_idle(gateway: &InProcess, count: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while idle(gateway) != count {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the pool did not come to {count} idle connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_carries_requests_one_after_another() {
    let upstream = counting_upstream(false).await;
    let gateway = gateway(upstream.address, "").await;
    let url = format!("http://{}/", gateway.address);
    for _ in 0..20 {
        let answer = get(&url).await;
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"ok");
        // Back in the pool once the answer's body is done.
        until_idle(&gateway, 1).await;
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_target_closed_is_not_used_again() {
    let mut upstream = counting_upstream(true).await;
    let gateway = gateway(upstream.address, "").await;
    let url = format!("http://{}/", gateway.address);
    for round in 1..=5 {
        let answer = get(&url).await;
        assert_eq!(answer.status, 200, "round {round}");
        // The target has closed the connection; once the gateway has seen it, its pool holds
        // nothing open, and the next request needs a new connection.
        tokio::time::timeout(Duration::from_secs(10), upstream.ended.recv())
            .await
            .unwrap()
            .unwrap();
        until_idle(&gateway, 0).await;
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 5);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idle_places_every_request_has_its_own_connection() {
    let mut upstream = counting_upstream(false).await;
    let gateway = gateway(upstream.address, "pool_max_idle_per_target = 0").await;
    let url = format!("http://{}/", gateway.address);
    for _ in 0..5 {
        assert_eq!(get(&url).await.status, 200);
    }
    // Each connection was closed by the gateway after its one exchange.
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(10), upstream.ended.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 5);
    assert_eq!(idle(&gateway), 0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let mut upstream = counting_upstream(false).await;
    let gateway = gateway(upstream.address, "pool_idle_timeout = \"1s\"").await;
    let url = format!("http://{}/", gateway.address);
    assert_eq!(get(&url).await.status, 200);
    // Nothing else is sent: the sweep closes the idle connection, and the upstream sees it go.
    tokio::time::timeout(Duration::from_secs(10), upstream.ended.recv())
        .await
        .expect("the idle connection was not closed")
        .unwrap();
    assert_eq!(idle(&gateway), 0);
    // The next request opens a new one.
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    gateway.stop().await;
}

/// `count` GETs of `/` through the gateway at once; their statuses, in order.
fn concurrent_gets(gateway: &InProcess, count: usize) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..count)
        .map(|_| {
            let url = format!("http://{}/", gateway.address);
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect()
}

async fn statuses(requests: Vec<tokio::task::JoinHandle<u16>>) -> Vec<u16> {
    let mut all = Vec::new();
    for request in requests {
        all.push(request.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_take_a_connection_of_their_own() {
    let mut upstream = gated_upstream().await;
    let gateway = gateway(upstream.address, "").await;
    for round in 1..=2 {
        let requests = concurrent_gets(&gateway, 8);
        // All eight are at the upstream at once, none answered yet: none waits behind another
        // on a shared connection.
        events(
            &mut upstream.arrived,
            8,
            "requests in flight at the upstream",
        )
        .await;
        assert_eq!(
            upstream.accepted.load(Ordering::SeqCst),
            8,
            "round {round}: one connection each, the second round on the first round's eight"
        );
        upstream.gate.add_permits(8);
        assert_eq!(statuses(requests).await, [200; 8], "round {round}");
        until_idle(&gateway, 8).await;
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pool_max_idle_per_target_connections_stay_idle() {
    let mut upstream = gated_upstream().await;
    let gateway = gateway(upstream.address, "pool_max_idle_per_target = 2").await;
    // Five answers in flight at once on five connections; as they finish, two places wait.
    let requests = concurrent_gets(&gateway, 5);
    events(
        &mut upstream.arrived,
        5,
        "requests in flight at the upstream",
    )
    .await;
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 5);
    upstream.gate.add_permits(5);
    assert_eq!(statuses(requests).await, [200; 5]);
    // The three beyond the two places are closed by the gateway, the upstream sees them go.
    events(&mut upstream.ended, 3, "connections closed").await;
    until_idle(&gateway, 2).await;
    // The next five: two on the idle connections, three on new ones.
    let requests = concurrent_gets(&gateway, 5);
    events(
        &mut upstream.arrived,
        5,
        "requests in flight at the upstream",
    )
    .await;
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 8);
    upstream.gate.add_permits(5);
    assert_eq!(statuses(requests).await, [200; 5]);
    gateway.stop().await;
}

/// Reads one request head (no body) byte by byte; `false` when the peer closed first.
fn read_head(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// An upstream on threads of its own: its first connection gets one `200 ok` on keep-alive and
/// is then held until `close` says, and closed without a word; later connections are answered
/// request after request.
struct Closing {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    close: std::sync::mpsc::Sender<()>,
    closed: std::sync::mpsc::Receiver<()>,
}

fn closing_upstream() -> Closing {
    use std::io::Write;
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (close, close_rx) = std::sync::mpsc::channel::<()>();
    let (closed_tx, closed) = std::sync::mpsc::channel::<()>();
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for (index, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            if index == 0 {
                if read_head(&mut stream) {
                    stream.write_all(ANSWER).unwrap();
                }
                let _ = close_rx.recv();
                drop(stream);
                let _ = closed_tx.send(());
            } else {
                std::thread::spawn(move || {
                    while read_head(&mut stream) && stream.write_all(ANSWER).is_ok() {}
                });
            }
        }
    });
    Closing {
        address,
        accepted,
        close,
        closed,
    }
}

/// A request sent on a pooled connection that the target has closed, before the gateway has
/// seen it close, is handed back unsent by hyper; the pool sends it on a new connection.
///
/// To be sure the request meets the closed connection rather than a pool that already knows,
/// the gateway runs on a runtime of one thread, frozen while the client's second request
/// arrives and then the target's close: when it thaws, one poll of the driver sees both, in
/// that order, and the client's connection runs first. Its request takes the pooled connection
/// (still open as far as the gateway knows) and queues on it; that connection's task then reads
/// the end of stream before writing anything, closes, and hands the request back.
#[test]
fn a_request_handed_back_unsent_by_a_closed_connection_goes_out_on_a_new_one() {
    use std::io::Write;
    let upstream = closing_upstream();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let (started, started_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let target = upstream.address;
    let serving = std::thread::spawn(move || {
        runtime.block_on(async move {
            let gateway = gateway(target, "").await;
            started
                .send((gateway.address, gateway.gateway.clone()))
                .unwrap();
            let _ = stop_rx.await;
            gateway.stop().await;
        });
    });
    let (address, gateway) = started_rx.recv().unwrap();

    let mut client = std::net::TcpStream::connect(address).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    client.write_all(request).unwrap();
    let first = sekisho_testkit::read_response(&mut client)
        .unwrap()
        .unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while idle_of(&gateway) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never back in the pool"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // Freeze the gateway's one thread.
    let (frozen, frozen_rx) = std::sync::mpsc::channel();
    let (thaw, thaw_rx) = std::sync::mpsc::channel::<()>();
    handle.spawn(async move {
        frozen.send(()).unwrap();
        let _ = thaw_rx.recv();
    });
    frozen_rx.recv().unwrap();
    client.write_all(request).unwrap();
    upstream.close.send(()).unwrap();
    upstream.closed.recv().unwrap();
    assert_eq!(
        idle_of(&gateway),
        1,
        "the gateway has not seen the close: its connection is still pooled"
    );
    thaw.send(()).unwrap();

    let second = sekisho_testkit::read_response(&mut client)
        .unwrap()
        .expect("an answer to the second request");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        2,
        "the second request went out on a new connection"
    );
    drop(client);
    stop.send(()).unwrap();
    serving.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_meets_the_target_with_max_connections_per_target_connections() {
    let mut upstream = gated_upstream().await;
    let gateway = gateway(upstream.address, "max_connections_per_target = 3").await;
    let requests = concurrent_gets(&gateway, 12);
    events(&mut upstream.arrived, 3, "the first three requests").await;
    // Answered one at a time: each answer frees a connection that a waiting request takes.
    for answered in 3..12 {
        upstream.gate.add_permits(1);
        events(
            &mut upstream.arrived,
            1,
            "a waiting request on a freed connection",
        )
        .await;
        assert_eq!(
            upstream.accepted.load(Ordering::SeqCst),
            3,
            "after {answered} answers"
        );
    }
    upstream.gate.add_permits(3);
    assert_eq!(statuses(requests).await, [200; 12]);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_connection_ends_at_its_route_timeout() {
    let mut upstream = gated_upstream().await;
    let gateway = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.up]\ntargets = [\"{}\"]\nmax_connections_per_target = 1\n\
         [[routes]]\nname = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"up\"\ntimeout = \"30s\"\n\
         [[routes]]\nname = \"quick\"\npath_prefix = \"/\"\nupstream = \"up\"\ntimeout = \"300ms\"\n",
        upstream.address
    ))
    .await;
    let slow = format!("http://{}/slow", gateway.address);
    let first = tokio::spawn(async move { get(&slow).await.status });
    events(&mut upstream.arrived, 1, "the first request").await;
    // The one connection is busy for a while: the second waits for it, and its own deadline
    // comes first; no second connection was opened for it.
    let second = statuses(concurrent_gets(&gateway, 1)).await;
    assert_eq!(second, [504]);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    upstream.gate.add_permits(1);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    gateway.stop().await;
}
