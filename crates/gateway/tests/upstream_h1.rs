//! The gateway's own HTTP/1.1 client side (`pool/owned.rs`, `sekisho_h1::parse_response`)
//! against a raw upstream over real sockets: every framing of an answer (length, chunked with
//! trailers, until close, none after `HEAD`), the request head it writes, refusals of malformed
//! answers, and a request written on a connection the target dropped.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sekisho_testkit::{get, send, InProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw upstream answering by path; it records each request head and counts connections.
struct Scripted {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

/// The answer to `path`, and whether the connection closes after it.
fn script(path: &str) -> (Vec<Vec<u8>>, bool) {
    let pieces = |parts: &[&[u8]]| parts.iter().map(|p| p.to_vec()).collect::<Vec<_>>();
    match path {
        "/chunked" => (
            pieces(&[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n6\r\n world\r\n",
                b"0\r\nx-sum: 11\r\n\r\n",
            ]),
            false,
        ),
        "/close" => (
            pieces(&[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end"]),
            true,
        ),
        "/big" => {
            let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 300000\r\n\r\n".to_vec();
            head.extend(std::iter::repeat_n(b'a', 100_000));
            (vec![head, vec![b'b'; 100_000], vec![b'c'; 100_000]], false)
        }
        "/head" => (
            pieces(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\nx-kind: head\r\n\r\n"]),
            false,
        ),
        "/bad-length" => (
            pieces(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx"]),
            true,
        ),
        "/short" => (
            pieces(&[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"]),
            true,
        ),
        _ => (
            pieces(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
            false,
        ),
    }
}

async fn scripted_upstream() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (counter, seen) = (Arc::clone(&accepted), Arc::clone(&heads));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
                        let length = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length: "))
                            .map_or(0, |value| value.trim().parse::<usize>().unwrap());
                        while pending.len() < end + 4 + length {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => pending.extend_from_slice(&chunk[..read]),
                            }
                        }
                        pending.drain(..end + 4 + length);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                        seen.lock().unwrap().push(head);
                        let (pieces, close) = script(&path);
                        for piece in pieces {
                            if stream.write_all(&piece).await.is_err() {
                                return;
                            }
                            stream.flush().await.unwrap();
                        }
                        if close {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => pending.extend_from_slice(&chunk[..read]),
                    }
                }
            });
        }
    });
    Scripted {
        address,
        accepted,
        heads,
    }
}

async fn gateway(target: SocketAddr) -> InProcess {
    InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.up]\ntargets = [\"{target}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\n"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_of_an_answer_is_read_to_its_end() {
    let upstream = scripted_upstream().await;
    let gateway = gateway(upstream.address).await;

    let chunked = get(&gateway.url("/chunked")).await;
    assert_eq!(
        (chunked.status, &chunked.body[..]),
        (200, &b"hello world"[..])
    );
    let big = get(&gateway.url("/big")).await;
    assert_eq!(big.body.len(), 300_000);
    assert!(big.body[..100_000].iter().all(|&b| b == b'a'));
    assert!(big.body[200_000..].iter().all(|&b| b == b'c'));
    // Both went on one connection: each answer was read exactly to its end.
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);

    // HEAD: a length, no body; the connection carries the next request at once.
    let client = sekisho_testkit::client();
    let head = send(&client, "HEAD", &gateway.url("/head"), &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-kind"), Some("head"));
    assert_eq!(head.header("content-length"), Some("1234"));
    assert!(get(&gateway.url("/")).await.body == "ok");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);

    // Until close: the whole body, and the connection is not used again.
    let close = get(&gateway.url("/close")).await;
    assert_eq!(&close.body[..], b"until the end");
    assert!(get(&gateway.url("/")).await.body == "ok");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answers_trailers_reach_an_http2_client() {
    let upstream = scripted_upstream().await;
    let gateway = gateway(upstream.address).await;
    let request = http::Request::get(gateway.url("/chunked"))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sekisho_testkit::h2_client().request(request).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("the trailers");
    assert_eq!(trailers["x-sum"], "11");
    assert_eq!(&collected.to_bytes()[..], b"hello world");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_head_states_the_bodys_length_and_nothing_hop_by_hop() {
    let upstream = scripted_upstream().await;
    let gateway = gateway(upstream.address).await;
    let client = sekisho_testkit::client();
    let answer = send(
        &client,
        "POST",
        &gateway.url("/form?q=1"),
        &[
            ("x-custom", "one"),
            ("connection", "x-custom-hop"),
            ("x-custom-hop", "no"),
        ],
        "abc",
    )
    .await;
    assert_eq!(answer.status, 200);
    let head = upstream.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("POST /form?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-length: 3\r\n"), "{head}");
    assert!(head.contains("\r\nx-custom: one\r\n"), "{head}");
    assert!(head.contains("\r\nx-request-id: "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding"), "{head}");
    assert!(!lower.contains("x-custom-hop"), "{head}");
    assert!(!lower.contains("\r\nconnection:"), "{head}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_cut_answer_is_a_502() {
    let upstream = scripted_upstream().await;
    let gateway = gateway(upstream.address).await;
    let bad = get(&gateway.url("/bad-length")).await;
    assert_eq!(bad.status, 502);
    assert_eq!(bad.error_code(), "UPSTREAM_ERROR");
    // The head came whole, the body did not: the client's answer is cut, not completed.
    let client = sekisho_testkit::client();
    let cut =
        sekisho_testkit::try_send(&client, "GET", &gateway.url("/short"), &[], Bytes::new()).await;
    assert!(cut.is_err(), "{cut:?}");
    gateway.stop().await;
}

/// An upstream whose first connection answers one request on keep-alive, then reads the next
/// request head and closes without answering (a keep-alive race lost: the target's idle
/// timeout fired as the request arrived); later connections answer every request.
async fn dropping_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let index = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = 0;
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => pending.extend_from_slice(&chunk[..read]),
                    }
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length: "))
                            .map_or(0, |value| value.trim().parse::<usize>().unwrap());
                        if pending.len() < end + 4 + length {
                            break;
                        }
                        pending.drain(..end + 4 + length);
                        if index == 0 && answered == 1 {
                            return;
                        }
                        answered += 1;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (address, accepted)
}

/// Waits (≤ 10 s) until the one target's pool holds an idle connection.
async fn until_pooled(gateway: &InProcess) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while gateway.gateway.upstreams()[0].targets[0].idle_connections != Some(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the connection never came back to the pool"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_written_on_a_connection_the_target_dropped_goes_out_again() {
    let (address, accepted) = dropping_upstream().await;
    let gateway = gateway(address).await;
    assert_eq!(get(&gateway.url("/one")).await.status, 200);
    until_pooled(&gateway).await;
    // Written on the pooled connection, which the target closes without a word: sent again
    // on a new connection (the route has no retry policy: this is the pool's doing).
    let second = get(&gateway.url("/two")).await;
    assert_eq!((second.status, &second.body[..]), (200, &b"ok"[..]));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_written_on_a_connection_the_target_dropped_is_not_sent_twice() {
    let (address, accepted) = dropping_upstream().await;
    let gateway = gateway(address).await;
    let client = sekisho_testkit::client();
    let first = send(&client, "POST", &gateway.url("/one"), &[], "a").await;
    assert_eq!(first.status, 200);
    until_pooled(&gateway).await;
    let second = send(&client, "POST", &gateway.url("/two"), &[], "b").await;
    assert_eq!(second.status, 502);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    gateway.stop().await;
}

/// An upstream that answers `413` as soon as it has a request head, then never reads again
/// (the connection stays open): the answer is there while the gateway is still sending.
async fn early_refusing_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!";
                let _ = stream.write_all(answer).await;
                // Held open, unread, until the test's runtime ends.
                std::future::pending::<()>().await;
                drop(stream);
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_a_large_buffered_upload_reaches_the_client() {
    let target = early_refusing_upstream().await;
    // A retrying route buffers the body whole (up to 32 MiB here) before the first attempt.
    let gateway = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.up]\ntargets = [\"{target}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\ntimeout = \"5s\"\n\
         max_body_bytes = 67108864\n\
         [routes.retry]\nattempts = 2\nretry_on = [\"connect_error\"]\nmax_buffered_body_bytes = 33554432\n"
    ))
    .await;
    let client = sekisho_testkit::client();
    let answer = send(
        &client,
        "PUT",
        &gateway.url("/upload"),
        &[],
        vec![b'u'; 16 * 1024 * 1024],
    )
    .await;
    // Not a 504 after the whole body waited on a target that stopped reading.
    assert_eq!((answer.status, &answer.body[..]), (413, &b"too big!"[..]));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_bound_an_idle_connection_of_hypers_makes_room_for_an_owned_one() {
    let upstream = scripted_upstream().await;
    let target = upstream.address;
    let gateway = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.up]\ntargets = [\"{target}\"]\nmax_connections_per_target = 1\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\ntimeout = \"5s\"\n"
    ))
    .await;
    let client = sekisho_testkit::client();
    // A streamed body (over 64 KiB) goes through hyper's client: its connection stays idle.
    let upload = send(
        &client,
        "POST",
        &gateway.url("/up"),
        &[],
        vec![b'x'; 200 * 1024],
    )
    .await;
    assert_eq!(upload.status, 200);
    until_pooled(&gateway).await;
    // A GET wants an owned connection; the one slot is held by hyper's idle one.
    let answer = get(&gateway.url("/after")).await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"ok"[..]));
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_get_goes_up_with_its_forwarding_fields() {
    let upstream = scripted_upstream().await;
    let gateway = gateway(upstream.address).await;
    let request = http::Request::get(gateway.url("/h2?x=1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sekisho_testkit::h2_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let head = upstream.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.starts_with("get /h2?x=1 http/1.1\r\n"), "{head}");
    let authority = gateway.address.to_string();
    for line in [
        format!("\r\nhost: {authority}\r\n"),
        "\r\nx-forwarded-for: 127.0.0.1\r\n".to_owned(),
        "\r\nx-forwarded-proto: http\r\n".to_owned(),
        format!("\r\nx-forwarded-host: {authority}\r\n"),
        format!("\r\nforwarded: for=127.0.0.1;proto=http;host=\"{authority}\"\r\n"),
        "\r\nx-request-id: ".to_owned(),
    ] {
        assert!(head.contains(&line), "{line:?} in {head}");
    }
    gateway.stop().await;
}
