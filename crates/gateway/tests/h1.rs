//! The owned HTTP/1.1 path (`h1`) over real sockets: the upstream's interim answers reach the
//! client, pipelined requests are answered in order, a small body is read whole, and one
//! connection can go from the owned path to hyper (a chunked body) without the client noticing.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use sekisho_testkit::{raw_exchange, raw_exchange_until_end, InProcess, RawEnd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(target: SocketAddr, extra_server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n{extra_server}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.up]\ntargets = [\"{target}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\n"
    )
}

/// An upstream that answers every request with `103 Early Hints` and then `200 ok`.
async fn early_hints_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let answer =
                            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
                                       HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
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
    address
}

/// An upstream (hyper) answering `METHOD PATH BODY-LENGTH`.
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service =
                hyper::service::service_fn(|request: http::Request<Incoming>| async move {
                    let method = request.method().clone();
                    let path = request.uri().path().to_owned();
                    let body = request.into_body().collect().await?.to_bytes();
                    let text = format!("{method} {path} {}", body.len());
                    Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(text))))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_interim_answers_reach_the_client_before_the_final_one() {
    let target = early_hints_upstream().await;
    let request = b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let gw = InProcess::start(&config(target, "")).await;
    let answer = raw_exchange(gw.address, request, Duration::from_secs(10));
    assert!(
        answer.starts_with(
            "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    // A request with a small body too.
    let post =
        b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let answer = raw_exchange(gw.address, post, Duration::from_secs(10));
    assert!(
        answer.starts_with("HTTP/1.1 103 Early Hints\r\n"),
        "{answer}"
    );
    gw.stop().await;

    // hyper's server, which serves every exchange when the owned path is off, cannot send them.
    let gw = InProcess::start(&config(target, "owned_http1 = false")).await;
    let answer = raw_exchange(gw.address, request, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(!answer.contains("103"), "{answer}");
    gw.stop().await;
}

/// A client connection that reads answers one at a time, keeping what it read past one (the
/// next pipelined answer) for the next.
struct Client {
    stream: TcpStream,
    read: Vec<u8>,
}

impl Client {
    fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            stream,
            read: Vec::new(),
        }
    }

    fn send(&mut self, request: &[u8]) {
        self.stream.write_all(request).unwrap();
    }

    /// The next answer, head and body (`with_body`: false for an answer to HEAD).
    fn answer(&mut self, with_body: bool) -> String {
        use std::io::Read;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.read[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0);
                let total = end + 4 + if with_body { length } else { 0 };
                if self.read.len() >= total {
                    let answer: Vec<u8> = self.read.drain(..total).collect();
                    return String::from_utf8_lossy(&answer).into_owned();
                }
            }
            let read = self.stream.read(&mut chunk).unwrap();
            assert!(
                read > 0,
                "closed early: {:?}",
                String::from_utf8_lossy(&self.read)
            );
            self.read.extend_from_slice(&chunk[..read]);
        }
    }

    fn exchange(&mut self, request: &[u8]) -> String {
        self.send(request);
        self.answer(true)
    }
}

fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_goes_from_the_owned_path_to_hyper_unnoticed() {
    let target = echo_upstream().await;
    let gw = InProcess::start(&config(target, "")).await;
    let address = gw.address;
    tokio::task::spawn_blocking(move || {
        let mut client = Client::connect(address);
        // Two requests in one write: answered in order (owned path).
        client.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        let first = client.answer(true);
        let second = client.answer(true);
        assert_eq!(body_of(&first), "GET /a 0", "{first}");
        assert_eq!(body_of(&second), "GET /b 0", "{second}");
        assert!(first.to_ascii_lowercase().contains("\r\ndate: "), "{first}");
        assert!(
            first.to_ascii_lowercase().contains("\r\nx-request-id: "),
            "{first}"
        );
        // HEAD: the length without the body, and the connection goes on.
        client.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n");
        let head = client.answer(false);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-length: 9\r\n"), "{head}");
        // A small body: read whole by the owned path.
        let small = client.exchange(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(body_of(&small), "POST /s 3", "{small}");
        // A chunked body: hyper serves this request and the rest of the connection.
        let post = client.exchange(
            b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(body_of(&post), "POST /p 5", "{post}");
        let after = client.exchange(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(body_of(&after), "GET /c 0", "{after}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_to_close_gets_its_answer_and_the_close() {
    let target = echo_upstream().await;
    let gw = InProcess::start(&config(target, "")).await;
    let ended = raw_exchange_until_end(
        gw.address,
        b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(ended.end, RawEnd::Closed);
    let answer = ended.answer;
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert_eq!(body_of(&answer), "GET /bye 0", "{answer}");
    gw.stop().await;
}
