//! `server.worker_model = "per_worker"` through the real binary: with `workers = 2` each
//! worker's event loop serves connections, each going to the loop with the fewest open (so
//! connections opened one after another alternate; counted by
//! `sekisho_worker_connections_total{worker}`), and a stop drains the requests in flight on
//! every loop before the process exits; each loop's overload probe is its own (shown per
//! worker). Without `reuse_port` the loops share one socket, which
//! no other process can join; with it each loop has a socket of its own on the address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{binary, cli, free_port};
use sekisho_testkit::{get, Origin, Reply, Sekisho, TempDir};

fn config(port: u16, upstream: SocketAddr, reuse_port: bool) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 2\nworker_model = \"per_worker\"\n\
         access_log = false\nreuse_port = {reuse_port}\ndrain_timeout = \"20s\"\n\
         [server.overload]\nmax_loop_delay = \"2s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{upstream}\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\ntimeout = \"30s\"\n"
    )
}

/// An origin answering `/slow` after a second and a half, anything else at once.
async fn origin() -> Origin {
    Origin::start(|head, _| {
        let reply = Reply::new(200, "ok");
        if head.uri.path() == "/slow" {
            reply.after(Duration::from_millis(1500))
        } else {
            reply
        }
    })
    .await
}

/// Sends `GET path` on `stream` and reads the answer's status (the body is `ok`, two bytes).
fn exchange(stream: &mut TcpStream, path: &str) -> u16 {
    write!(stream, "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
    read_status(stream)
}

fn read_status(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap() == 0 {
            return 0;
        }
        head.push(byte[0]);
    }
    let mut body = [0u8; 2];
    stream.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&head)[9..12].parse().unwrap()
}

/// `count` connections to `address`, each with one request answered; kept open.
fn connections(address: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = TcpStream::connect(address).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            assert_eq!(exchange(&mut stream, "/"), 200);
            stream
        })
        .collect()
}

/// The gateway's `/metrics` text.
async fn metrics(gateway: &Sekisho) -> String {
    String::from_utf8(get(&gateway.admin_url("/metrics")).await.body.to_vec()).unwrap()
}

/// Connections served by each worker, from `/metrics`.
async fn served_by_worker(gateway: &Sekisho) -> [u64; 2] {
    let metrics = metrics(gateway).await;
    let count = |worker: usize| {
        let series = format!("sekisho_worker_connections_total{{worker=\"{worker}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .map_or(0, |value| value.trim().parse().unwrap())
    };
    [count(0), count(1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_serves_what_it_accepts_and_a_stop_drains_every_worker() {
    let origin = origin().await;
    let dir = TempDir::new("workers");
    let path = dir.write("sekisho.toml", &config(0, origin.address, true));
    let mut gateway = Sekisho::start(&binary(), &path);
    let address = gateway.address;

    // A socket per worker, the kernel's hash choosing one for each new connection; whichever
    // accepts, the connection goes to the loop with fewer open: 16 each.
    let mut streams = tokio::task::spawn_blocking(move || connections(address, 32))
        .await
        .unwrap();
    let [first, second] = served_by_worker(&gateway).await;
    assert_eq!((first, second), (16, 16));
    // Each loop has its own overload probe, shown per worker.
    let metrics = metrics(&gateway).await;
    for worker in ["0", "1"] {
        let series = format!("sekisho_worker_event_loop_delay_seconds{{worker=\"{worker}\"}} ");
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }

    // A slow request in flight on every connection, then a stop: each worker answers its own
    // before the process exits.
    for stream in &mut streams {
        write!(stream, "GET /slow HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while origin.calls("/slow") < 32 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow calls did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.signal("TERM");
    let statuses = tokio::task::spawn_blocking(move || {
        streams.iter_mut().map(read_status).collect::<Vec<u16>>()
    })
    .await
    .unwrap();
    assert!(statuses.iter().all(|&status| status == 200), "{statuses:?}");
    assert_eq!(
        gateway.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reuse_port_the_workers_share_one_socket_that_no_other_process_joins() {
    let origin = origin().await;
    let port = free_port();
    let dir = TempDir::new("workers-one-socket");
    let plain = dir.write("plain.toml", &config(port, origin.address, false));
    let gateway = Sekisho::start(&binary(), &plain);
    let address = gateway.address;
    let streams = tokio::task::spawn_blocking(move || connections(address, 16))
        .await
        .unwrap();
    // One socket, whichever loop is ready first accepting: the connections still alternate.
    let [first, second] = served_by_worker(&gateway).await;
    assert_eq!((first, second), (8, 8));

    // Even a process that asks for SO_REUSEPORT cannot listen beside it.
    let joining = dir.write("joining.toml", &config(port, origin.address, true));
    let joining = joining.to_str().unwrap().to_owned();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || cli(&["run", "--config", &joining], ""))
            .await
            .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in use"), "{err}");
    drop(streams);
}
