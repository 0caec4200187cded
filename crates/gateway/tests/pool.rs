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
use tokio::sync::mpsc;

/// An HTTP/1.1 upstream answering `200 ok` to every request head, on keep-alive connections.
struct Counting {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// One message per connection that ended (the peer closed it, or the upstream did).
    ended: mpsc::UnboundedReceiver<()>,
}

/// `close_after_answer`: the upstream closes each connection right after its first answer,
/// without saying so (no `Connection: close`), as a server whose keep-alive timeout is shorter
/// than the gateway's does.
async fn counting_upstream(close_after_answer: bool) -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let ended_tx = ended_tx.clone();
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
    gateway.gateway.upstreams()[0].targets[0]
        .idle_connections
        .unwrap()
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
