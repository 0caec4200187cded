//! The prototype against a real upstream on port 0: keep-alive and pooling, bodies by length and
//! chunked (pipelined after), chunked and close-delimited responses, refusals, the header
//! timeout, an upstream that is gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use h1_proto::chunked::ChunkedScanner;
use h1_proto::{serve, Shared, Timeouts, TimerMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one message head from `stream` into `buf`: its length in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..read]);
    }
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Reads a body framed by `head` (length, chunked raw, or until close) from `buf` + `stream`;
/// what follows it stays in `buf`.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &str,
    until_close: bool,
) -> Vec<u8> {
    enum Frame {
        Length(usize),
        Chunked(ChunkedScanner),
        Close,
    }
    let mut frame = if let Some(length) = header(head, "content-length") {
        Frame::Length(length.parse().unwrap_or(0))
    } else if header(head, "transfer-encoding").is_some() {
        Frame::Chunked(ChunkedScanner::new())
    } else if until_close {
        Frame::Close
    } else {
        Frame::Length(0)
    };
    let mut body = Vec::new();
    loop {
        let taken = match &mut frame {
            Frame::Length(length) => {
                let taken = (*length).min(buf.len());
                *length -= taken;
                taken
            }
            Frame::Chunked(scanner) => scanner.scan(buf).unwrap_or(buf.len()),
            Frame::Close => buf.len(),
        };
        body.extend(buf.drain(..taken));
        let done = match &frame {
            Frame::Length(length) => *length == 0,
            Frame::Chunked(scanner) => scanner.is_done(),
            Frame::Close => false,
        };
        if done {
            return body;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return body,
            Ok(read) => buf.extend_from_slice(&chunk[..read]),
        }
    }
}

/// The test upstream: answers `/echo` with what it received (head, `|`, raw body),
/// `/chunked` with a chunked body, `/close` with a close-delimited one; after `/then-close` it
/// closes a connection it said would stay open. Counts connections.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head_len) = read_head(&mut stream, &mut buf).await {
                    let head: Vec<u8> = buf.drain(..head_len).collect();
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let body = read_body(&mut stream, &mut buf, &head, false).await;
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let answer = match path.as_str() {
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
                        "/close" => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbye".to_vec(),
                        _ => {
                            let mut echoed = head.into_bytes();
                            echoed.push(b'|');
                            echoed.extend_from_slice(&body);
                            let mut answer = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\n\r\n",
                                echoed.len()
                            )
                            .into_bytes();
                            answer.extend_from_slice(&echoed);
                            answer
                        }
                    };
                    let closes = path == "/close" || path == "/then-close";
                    if stream.write_all(&answer).await.is_err() || closes {
                        return;
                    }
                }
            });
        }
    });
    (address, accepted)
}

async fn proxy_to(upstream: SocketAddr, timeouts: Timeouts) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(serve(listener, Shared::new(upstream, timeouts)));
    address
}

/// A client connection with its read buffer.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(proxy: SocketAddr) -> Self {
        let stream = TcpStream::connect(proxy)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.stream
            .write_all(raw)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The next response: head and body (`until_close`: a body without framing runs to EOF).
    async fn response(&mut self, until_close: bool) -> Option<(String, String)> {
        let head_len = read_head(&mut self.stream, &mut self.buf).await?;
        let head: Vec<u8> = self.buf.drain(..head_len).collect();
        let head = String::from_utf8_lossy(&head).into_owned();
        let body = read_body(&mut self.stream, &mut self.buf, &head, until_close).await;
        Some((head, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Whether the proxy closed the connection (EOF or reset) within a second.
    async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

#[tokio::test(flavor = "current_thread")]
async fn keep_alive_requests_share_one_upstream_connection_and_are_edited() {
    let (upstream, accepted) = upstream().await;
    let proxy = proxy_to(upstream, Timeouts::default()).await;
    let mut client = Client::connect(proxy).await;
    for round in 0..3 {
        client
            .send(b"GET /echo HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nTE: trailers\r\nAccept: */*\r\n\r\n")
            .await;
        let (head, body) = client
            .response(false)
            .await
            .unwrap_or_else(|| panic!("round {round}"));
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(
            header(&head, "keep-alive"),
            None,
            "hop-by-hop dropped: {head}"
        );
        let id = header(&head, "x-request-id").unwrap_or_else(|| panic!("{head}"));
        assert_eq!(id.len(), 32);
        assert!(
            body.starts_with("GET /echo HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n"),
            "{body}"
        );
        assert!(
            body.contains("X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"),
            "{body}"
        );
        assert!(body.contains(&format!("X-Request-Id: {id}\r\n")), "{body}");
        assert!(!body.contains("X-Drop") && !body.contains("TE:") && !body.contains("Connection"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the upstream connection is pooled"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn bodies_by_length_and_chunked_pass_through_and_keep_the_framing() {
    let (upstream, _) = upstream().await;
    let proxy = proxy_to(upstream, Timeouts::default()).await;
    let mut client = Client::connect(proxy).await;
    // A length body, a chunked one and a GET, pipelined in one write.
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nTrailer-A: 1\r\n\r\n\
GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let (_, body) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("first"));
    assert!(body.ends_with("|hello"), "{body}");
    let (_, body) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("second"));
    assert!(body.contains("Transfer-Encoding: chunked\r\n"), "{body}");
    assert!(
        body.ends_with("|5;x=1\r\nhello\r\n0\r\nTrailer-A: 1\r\n\r\n"),
        "passed as is: {body}"
    );
    let (_, body) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("third"));
    assert!(body.starts_with("GET /echo "), "{body}");

    // A body that arrives in pieces, after the head.
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.send(b"56789").await;
    let (_, body) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("fourth"));
    assert!(body.ends_with("|0123456789"), "{body}");
}

#[tokio::test(flavor = "current_thread")]
async fn chunked_and_close_delimited_responses() {
    let (upstream, _) = upstream().await;
    let proxy = proxy_to(upstream, Timeouts::default()).await;
    let mut client = Client::connect(proxy).await;
    client
        .send(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let (head, body) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("chunked"));
    assert_eq!(header(&head, "transfer-encoding"), Some("chunked"));
    assert_eq!(body, "3\r\nabc\r\n0\r\n\r\n", "not re-framed");

    client.send(b"GET /close HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let (head, body) = client
        .response(true)
        .await
        .unwrap_or_else(|| panic!("close"));
    assert_eq!(header(&head, "connection"), Some("close"));
    assert_eq!(body, "bye");
    assert!(client.closed().await);
}

#[tokio::test(flavor = "current_thread")]
async fn smuggling_shapes_are_answered_400_and_the_connection_closed() {
    let (upstream, accepted) = upstream().await;
    let proxy = proxy_to(upstream, Timeouts::default()).await;
    for raw in [
        &b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /echo HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ] {
        let mut client = Client::connect(proxy).await;
        client.send(raw).await;
        let answer = client.response(false).await;
        // A bad chunk that arrives after the head went upstream cuts the exchange unanswered.
        let bad_chunk = raw.ends_with(b"zz\r\n");
        assert!(
            answer.as_ref().is_some_and(|(head, _)| head.starts_with("HTTP/1.1 400 "))
                || (bad_chunk && answer.is_none()),
            "{}: {answer:?}",
            String::from_utf8_lossy(raw)
        );
        assert!(client.closed().await);
    }
    assert!(
        accepted.load(Ordering::SeqCst) <= 1,
        "only the bad chunk reached the upstream"
    );
}

/// A client that sends its head a line at a time, each line sooner than the header timeout.
async fn slow_head_is_cut(mode: TimerMode) {
    let (upstream, _) = upstream().await;
    let timeouts = Timeouts {
        header: Duration::from_millis(300),
        tick: Duration::from_millis(100),
        mode,
        ..Timeouts::default()
    };
    let proxy = proxy_to(upstream, timeouts).await;
    let mut client = Client::connect(proxy).await;
    let started = tokio::time::Instant::now();
    client.send(b"GET /echo HTTP/1.1\r\n").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _ = client.stream.write_all(b"X-Drip: 1\r\n").await;
    }
    assert!(client.closed().await, "{mode:?}");
    assert!(started.elapsed() < Duration::from_millis(1500), "{mode:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_head_sent_slowly_is_cut_at_the_header_timeout() {
    slow_head_is_cut(TimerMode::Ticks).await;
    slow_head_is_cut(TimerMode::PerWait).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_is_closed_and_a_slow_upstream_is_504() {
    let (upstream, _) = upstream().await;
    for mode in [TimerMode::Ticks, TimerMode::PerWait] {
        let timeouts = Timeouts {
            idle: Duration::from_millis(300),
            tick: Duration::from_millis(100),
            mode,
            ..Timeouts::default()
        };
        let proxy = proxy_to(upstream, timeouts).await;
        let mut client = Client::connect(proxy).await;
        client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(client.response(false).await.is_some());
        assert!(
            client.closed().await,
            "{mode:?}: idle keep-alive connection closed"
        );
    }
    // An upstream that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let silent_address = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let timeouts = Timeouts {
        read: Duration::from_millis(300),
        tick: Duration::from_millis(100),
        ..Timeouts::default()
    };
    let proxy = proxy_to(silent_address, timeouts).await;
    let mut client = Client::connect(proxy).await;
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let (head, _) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("no answer"));
    assert!(head.starts_with("HTTP/1.1 504 "), "{head}");
}

#[tokio::test(flavor = "current_thread")]
async fn an_upstream_that_is_gone_gives_502() {
    // A port that was just free: nothing listens there.
    let gone = {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    };
    let proxy = proxy_to(gone, Timeouts::default()).await;
    let mut client = Client::connect(proxy).await;
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let (head, _) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("no answer"));
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_head_cut_in_many_ranges_is_forwarded_whole() {
    let (upstream, _) = upstream().await;
    let proxy = proxy_to(upstream, Timeouts::default()).await;
    let mut client = Client::connect(proxy).await;
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n".to_vec();
    for index in 0..10 {
        raw.extend_from_slice(format!("TE: x\r\nX-Keep-{index}: {index}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\nhi");
    client.send(&raw).await;
    let (_, body) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("no answer"));
    for index in 0..10 {
        assert!(
            body.contains(&format!("\r\nX-Keep-{index}: {index}\r\n")),
            "{body}"
        );
    }
    assert!(!body.contains("TE:") && body.ends_with("|hi"), "{body}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_pooled_connection_the_upstream_closed_is_replaced_and_the_request_sent_again() {
    let (upstream, accepted) = upstream().await;
    let proxy = proxy_to(upstream, Timeouts::default()).await;
    let mut client = Client::connect(proxy).await;
    client
        .send(b"GET /then-close HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let (head, _) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("first"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // Let the upstream's close reach the pooled connection.
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let (head, body) = client
        .response(false)
        .await
        .unwrap_or_else(|| panic!("second"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.starts_with("GET /echo "), "{body}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a new upstream connection"
    );
}
