//! The owned HTTP/1.1 path (`h1`) over real sockets: the upstream's interim answers reach the
//! client (also while a large body is still on its way), pipelined requests are answered in
//! order, a small body is read whole, a large one streamed, and one connection can go from the
//! owned path to hyper (a chunked body) without the client noticing.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sekisho_testkit::{
    early_hints_upstream, echo_upstream, raw_exchange, raw_exchange_until_end, InProcess, RawEnd,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(target: SocketAddr, extra_server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n{extra_server}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.up]\ntargets = [\"{target}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\n"
    )
}

/// An upstream that answers `103 Early Hints` as soon as a request's head arrives, then reads
/// its whole body (`Content-Length`) and answers `200 got N`.
async fn hints_then_reads_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length: "))
                            .and_then(|value| value.trim().parse().ok())
                            .unwrap_or(0);
                        let hint =
                            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n";
                        if stream.write_all(hint).await.is_err() {
                            return;
                        }
                        while pending.len() < end + 4 + length {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => pending.extend_from_slice(&chunk[..read]),
                            }
                        }
                        pending.drain(..end + 4 + length);
                        let text = format!("got {length}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
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
        // A body with a coding before `chunked`: hyper serves this request and the rest of the
        // connection.
        let post = client.exchange(
            b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(body_of(&post), "POST /p 5", "{post}");
        let after = client.exchange(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(body_of(&after), "GET /c 0", "{after}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

/// A body too large to read whole first is streamed to the upstream as it arrives, so the
/// upstream's interim answer reaches the client while the client is still sending: the client
/// waits for the `103` before it sends the second half. (Handed to hyper, as before, the `103`
/// never came.) The connection then carries the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interim_answer_reaches_a_client_still_sending_a_large_body() {
    let target = hints_then_reads_upstream().await;
    let gw = InProcess::start(&config(target, "")).await;
    let address = gw.address;
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let size = 1024 * 1024;
        let mut client = Client::connect(address);
        client.send(
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n")
                .as_bytes(),
        );
        client.send(&vec![b'a'; size / 2]);
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = client
                .stream
                .read(&mut chunk)
                .expect("the 103 while the body is half sent");
            assert!(read > 0, "closed before the interim answer");
            seen.extend_from_slice(&chunk[..read]);
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        assert!(
            text.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n"),
            "{text}"
        );
        client.read = seen[text.find("\r\n\r\n").unwrap() + 4..].to_vec();
        client.send(&vec![b'b'; size - size / 2]);
        let done = client.answer(true);
        assert!(done.starts_with("HTTP/1.1 200 OK\r\n"), "{done}");
        assert_eq!(body_of(&done), format!("got {size}"), "{done}");
        // The same connection goes on with the next request (a small body this time).
        client.send(b"POST /n HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
        let hint = client.answer(true);
        assert!(hint.starts_with("HTTP/1.1 103 "), "{hint}");
        let next = client.answer(true);
        assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "{next}");
        assert_eq!(body_of(&next), "got 2", "{next}");
    })
    .await
    .unwrap();
    gw.stop().await;
}

/// A large body streamed to an upstream that reads it: every byte arrives, in order, and the
/// answer of an upstream that did not wait for the whole body ends the connection (the rest of
/// the body is never read as a request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streams_whole_and_an_early_answer_closes() {
    let target = echo_upstream().await;
    let gw = InProcess::start(&config(target, "")).await;
    let address = gw.address;
    tokio::task::spawn_blocking(move || {
        let size = 300 * 1024 + 7;
        let mut client = Client::connect(address);
        let mut request =
            format!("POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n").into_bytes();
        request.extend((0..size).map(|i| b'a' + (i % 26) as u8));
        request.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
        client.send(&request);
        let answer = client.answer(true);
        assert_eq!(body_of(&answer), format!("POST /big {size}"), "{answer}");
        let after = client.answer(true);
        assert_eq!(body_of(&after), "GET /after 0", "{after}");
    })
    .await
    .unwrap();
    gw.stop().await;

    // The early-hints upstream answers without reading a body: its answer comes while the
    // body is still unread, so the gateway says close and ends the connection.
    let gw = InProcess::start(&config(early_hints_upstream().await, "")).await;
    let size = 200 * 1024;
    let mut request =
        format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n").into_bytes();
    request.extend_from_slice(&vec![b'z'; 1000]);
    let ended = raw_exchange_until_end(gw.address, &request, Duration::from_secs(10));
    assert_eq!(ended.end, RawEnd::Closed, "{}", ended.answer);
    assert!(
        ended.answer.contains("HTTP/1.1 200 OK\r\n"),
        "{}",
        ended.answer
    );
    assert!(
        ended.answer.contains("\r\nconnection: close\r\n"),
        "{}",
        ended.answer
    );
    gw.stop().await;
}

/// A chunked body stays on the owned path: decoded as its chunks arrive (in two writes here)
/// and re-framed for the upstream, the next pipelined request served after it; the upstream's
/// interim answer reaches a client sending a chunked body (hyper's server drops it); and a
/// malformed chunk ends the exchange with 400 and the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_stays_on_the_owned_path() {
    let gw = InProcess::start(&config(echo_upstream().await, "")).await;
    let address = gw.address;
    tokio::task::spawn_blocking(move || {
        let mut client = Client::connect(address);
        client.send(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
        std::thread::sleep(Duration::from_millis(20));
        client.send(
            b"lo\r\n6;ext=1\r\n world\r\n0\r\nChecksum: 1\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let answer = client.answer(true);
        assert_eq!(body_of(&answer), "POST /c 11", "{answer}");
        let after = client.answer(true);
        assert_eq!(body_of(&after), "GET /after 0", "{after}");
    })
    .await
    .unwrap();
    let ended = raw_exchange_until_end(
        gw.address,
        b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(
        ended.answer.starts_with("HTTP/1.1 400 "),
        "{}",
        ended.answer
    );
    assert!(ended.answer.contains("BAD_REQUEST"), "{}", ended.answer);
    assert_eq!(ended.end, RawEnd::Closed, "{}", ended.answer);
    gw.stop().await;

    let gw = InProcess::start(&config(early_hints_upstream().await, "")).await;
    let answer = raw_exchange(
        gw.address,
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(
        answer.starts_with("HTTP/1.1 103 Early Hints\r\n"),
        "{answer}"
    );
    assert!(answer.contains("HTTP/1.1 200 OK\r\n"), "{answer}");
    gw.stop().await;
}

/// `Expect: 100-continue` is met on the owned path: `100 Continue` goes out once the steps want
/// the body (the client sends it only then), the upstream's interim answer reaches the client
/// too (hyper's server, which served such requests before, dropped it), and nothing is sent
/// when the gateway refuses the request first (413 from the route's body limit: the
/// connection then ends, its body unread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_expecting_100_continue_is_told_when_its_body_is_wanted() {
    let target = hints_then_reads_upstream().await;
    let gw = InProcess::start(&config(target, "")).await;
    let address = gw.address;
    tokio::task::spawn_blocking(move || {
        let mut client = Client::connect(address);
        client.send(
            b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        );
        // Interim heads until the 100 (the upstream's 103 may come before or after it).
        let mut interim = Vec::new();
        while !interim
            .iter()
            .any(|head: &String| head.starts_with("HTTP/1.1 100 Continue\r\n"))
        {
            interim.push(client.answer(false));
        }
        client.send(b"abc");
        let mut answer = client.answer(true);
        while answer.starts_with("HTTP/1.1 1") {
            interim.push(answer);
            answer = client.answer(true);
        }
        assert!(
            interim
                .iter()
                .any(|head| head.starts_with("HTTP/1.1 103 Early Hints\r\n")),
            "{interim:?}"
        );
        assert_eq!(body_of(&answer), "got 3", "{answer}");
    })
    .await
    .unwrap();
    gw.stop().await;

    let limited = format!("{}max_body_bytes = 4\n", config(target, ""));
    let gw = InProcess::start(&limited).await;
    let ended = raw_exchange_until_end(
        gw.address,
        b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(
        ended.answer.starts_with("HTTP/1.1 413 "),
        "{}",
        ended.answer
    );
    assert!(!ended.answer.contains("100 Continue"), "{}", ended.answer);
    assert_eq!(ended.end, RawEnd::Closed, "{}", ended.answer);
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
