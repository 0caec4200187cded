//! The chaos upstream over real sockets on 127.0.0.1, driven by a hyper client.
// The helpers outside the #[test] functions fail their test as an assert does.
#![allow(clippy::expect_used)]

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sekisho_load::{ChaosHandle, ChaosOptions, ChaosServer, ChaosState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type BoxError = Box<dyn StdError + Send + Sync>;
type ClientBody = BoxBody<Bytes, BoxError>;

/// A chaos upstream serving in the background of a test.
struct Running {
    addr: SocketAddr,
    handle: ChaosHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(name: Option<&str>) -> Self {
        let server = ChaosServer::bind(ChaosOptions {
            listen: "127.0.0.1:0".parse().expect("address"),
            latency: Duration::ZERO,
            error_rate: 0.0,
            name: name.map(str::to_owned),
        })
        .await
        .expect("bind");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let handle = server.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            handle,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Resolves the shutdown future and waits (bounded) for `run` to return.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("run returns after shutdown")
            .expect("run task")
            .expect("run result");
    }
}

fn http1() -> Client<HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c() -> Client<HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn empty() -> ClientBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A request body fed chunk by chunk through a channel; it ends when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

fn channel_body(capacity: usize) -> (tokio::sync::mpsc::Sender<Bytes>, ClientBody) {
    let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
    (sender, ChannelBody(receiver).boxed())
}

fn get(url: &str) -> Request<ClientBody> {
    Request::get(url).body(empty()).expect("request")
}

fn post_json(url: &str, body: &str) -> Request<ClientBody> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(full(body.to_owned()))
        .expect("request")
}

async fn send(
    client: &Client<HttpConnector, ClientBody>,
    request: Request<ClientBody>,
) -> (Response<()>, Bytes) {
    let response = client.request(request).await.expect("response");
    read(response).await
}

async fn read(response: Response<Incoming>) -> (Response<()>, Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (Response::from_parts(parts, ()), bytes)
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("JSON body")
}

fn upstream(response: &Response<()>) -> &str {
    response
        .headers()
        .get("x-upstream")
        .expect("x-upstream")
        .to_str()
        .expect("x-upstream is text")
}

#[tokio::test]
async fn plain_get_describes_the_request() {
    let server = Running::start(Some("alpha")).await;
    let client = http1();
    let request = Request::get(server.url("/some/path?x=1&y=2"))
        .header("x-test", "one")
        .header("X-Multi", "a")
        .header("x-multi", "b")
        .body(empty())
        .expect("request");
    let (response, body) = send(&client, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream(&response), "alpha");
    assert_eq!(
        response.headers().get("content-type").expect("type"),
        "application/json"
    );
    let body = json(&body);
    assert_eq!(body["server"], "alpha");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/some/path");
    assert_eq!(body["query"], "x=1&y=2");
    assert_eq!(body["headers"]["x-test"], "one");
    assert_eq!(body["headers"]["x-multi"], "a, b");
    assert_eq!(body["headers"]["host"], server.addr.to_string());

    let (_, body) = send(&client, get(&server.url("/plain"))).await;
    assert_eq!(json(&body)["query"], serde_json::Value::Null);
    assert_eq!(server.handle.requests(), 2);
    server.stop().await;
}

#[tokio::test]
async fn the_name_defaults_to_the_listen_address() {
    let server = Running::start(None).await;
    let (response, body) = send(&http1(), get(&server.url("/"))).await;
    assert_eq!(upstream(&response), server.addr.to_string());
    assert_eq!(json(&body)["server"], server.addr.to_string());
    server.stop().await;
}

#[tokio::test]
async fn health_answers_ok() {
    let server = Running::start(None).await;
    let (response, body) = send(&http1(), get(&server.url("/health"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json(&body), serde_json::json!({"status": "ok"}));
    assert!(response.headers().contains_key("x-upstream"));
    server.stop().await;
}

#[tokio::test]
async fn bytes_returns_exactly_that_many_bytes() {
    let server = Running::start(None).await;
    let client = http1();
    let (response, body) = send(&client, get(&server.url("/bytes/1048576"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("content-length").expect("length"),
        "1048576"
    );
    assert!(response.headers().contains_key("x-upstream"));
    assert_eq!(body.len(), 1_048_576);
    let (_, body) = send(&client, get(&server.url("/bytes/0"))).await;
    assert!(body.is_empty());
    let (_, body) = send(&client, get(&server.url("/bytes/70000"))).await;
    assert_eq!(body.len(), 70_000);
    server.stop().await;
}

#[tokio::test]
async fn a_closing_connection_delivers_the_whole_answer() {
    // Only a reset may discard unsent bytes: an ordinary close after a large answer must not.
    let server = Running::start(None).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /bytes/1048576 HTTP/1.1\r\nhost: chaos\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the answer ends")
        .expect("an orderly close");
    let head_end = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(answer.len() - head_end, 1_048_576);
    server.stop().await;
}

/// 5 MiB of bytes that are not a short repetition, so a reordering or a lost chunk shows.
fn five_mib() -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..5 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

async fn echo_round_trip(client: Client<HttpConnector, ClientBody>, server: &Running) {
    let payload = Bytes::from(five_mib());
    let (sender, body) = channel_body(4);
    let request = Request::put(server.url("/echo"))
        .header("content-type", "application/x-test")
        .body(body)
        .expect("request");
    let chunks = payload.clone();
    let feeder = tokio::spawn(async move {
        for start in (0..chunks.len()).step_by(100_000) {
            let end = (start + 100_000).min(chunks.len());
            sender.send(chunks.slice(start..end)).await.expect("send");
        }
    });
    let (response, echoed) = read(client.request(request).await.expect("response")).await;
    feeder.await.expect("feeder");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("content-type").expect("type"),
        "application/x-test"
    );
    assert!(response.headers().contains_key("x-upstream"));
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echo differs from what was sent");
}

#[tokio::test]
async fn post_echo_round_trips_five_mib_streamed_in_chunks() {
    let server = Running::start(None).await;
    echo_round_trip(http1(), &server).await;
    server.stop().await;
}

#[tokio::test]
async fn echo_streams_before_the_request_body_ends() {
    let server = Running::start(None).await;
    let (sender, body) = channel_body(1);
    let request = Request::post(server.url("/anything"))
        .body(body)
        .expect("request");
    sender
        .send(Bytes::from_static(b"ping"))
        .await
        .expect("send");
    // The answer comes while the request is still open: the echo does not wait for the end.
    let response = tokio::time::timeout(Duration::from_secs(5), http1().request(request))
        .await
        .expect("answer before the body ends")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("echo before the body ends")
            .expect("a frame")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    assert_eq!(seen, b"ping");
    sender
        .send(Bytes::from_static(b"pong"))
        .await
        .expect("send");
    drop(sender);
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(&rest[..], b"pong");
    server.stop().await;
}

#[tokio::test]
async fn error_rate_can_be_changed_at_run_time() {
    let server = Running::start(Some("beta")).await;
    let client = http1();

    let (response, body) = send(
        &client,
        post_json(&server.url("/_chaos"), r#"{"error_rate":1.0}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json(&body)["error_rate"], 1.0);
    assert_eq!(server.handle.state().error_rate, 1.0);

    for path in ["/", "/health", "/bytes/10"] {
        let (response, body) = send(&client, get(&server.url(path))).await;
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{path}"
        );
        assert_eq!(upstream(&response), "beta");
        assert_eq!(json(&body), serde_json::json!({"error": "chaos"}));
    }
    let (response, _) = send(&client, post_json(&server.url("/echo"), "{}")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let (response, _) = send(
        &client,
        post_json(&server.url("/_chaos"), r#"{"error_rate":0.0}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (response, _) = send(&client, get(&server.url("/"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.handle.requests(), 5);
    server.stop().await;
}

#[tokio::test]
async fn partial_updates_keep_the_other_fields() {
    let server = Running::start(None).await;
    let client = http1();
    server.handle.set(ChaosState {
        latency_ms: 0,
        error_rate: 0.25,
        hang: false,
        reset: false,
    });
    let (response, body) = send(
        &client,
        post_json(&server.url("/_chaos"), r#"{"latency_ms":7}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let expected = ChaosState {
        latency_ms: 7,
        error_rate: 0.25,
        hang: false,
        reset: false,
    };
    let answered: ChaosState = serde_json::from_slice(&body).expect("state");
    assert_eq!(answered, expected);
    assert_eq!(server.handle.state(), expected);

    let (response, body) = send(&client, get(&server.url("/_chaos"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-upstream"));
    let value = json(&body);
    assert_eq!(value["requests"], 0, "/_chaos is not counted");
    let shown: ChaosState = serde_json::from_value(value).expect("state with `requests`");
    assert_eq!(shown, expected);
    assert_eq!(server.handle.requests(), 0);
    server.stop().await;
}

#[tokio::test]
async fn bad_updates_are_refused_and_change_nothing() {
    let server = Running::start(None).await;
    let client = http1();
    let before = server.handle.state();
    for bad in [
        "{not json",
        "[1, 2]",
        r#"{"error_rate": 1.5}"#,
        r#"{"error_rate": -0.1}"#,
        r#"{"latency_ms": -1}"#,
        r#"{"latency_ms": "fast"}"#,
        r#"{"hang": "yes"}"#,
        r#"{"error_rate": 1.0, "hang": 3}"#,
    ] {
        let (response, body) = send(&client, post_json(&server.url("/_chaos"), bad)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(json(&body)["error"].is_string(), "{bad}");
        assert_eq!(server.handle.state(), before, "{bad}");
    }
    server.stop().await;
}

#[tokio::test]
async fn latency_delays_answers() {
    let server = Running::start(None).await;
    let client = http1();
    let (response, _) = send(
        &client,
        post_json(&server.url("/_chaos"), r#"{"latency_ms":200}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    let (response, _) = send(&client, get(&server.url("/"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // `/_chaos` is never delayed: turning the latency off is not held up by it.
    let (response, _) = send(
        &client,
        post_json(&server.url("/_chaos"), r#"{"latency_ms":0}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn latency_from_the_options_applies_from_the_start() {
    let server = ChaosServer::bind(ChaosOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        latency: Duration::from_millis(150),
        error_rate: 0.0,
        name: None,
    })
    .await
    .expect("bind");
    let handle = server.handle();
    assert_eq!(handle.state().latency_ms, 150);
    let url = format!("http://{}/", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    let (response, _) = send(&http1(), get(&url)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run returns")
        .expect("task")
        .expect("run");
}

#[tokio::test]
async fn hang_never_answers_until_turned_off() {
    let server = Running::start(None).await;
    let client = http1();
    let (response, body) = send(
        &client,
        post_json(&server.url("/_chaos"), r#"{"hang":true}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json(&body)["hang"], true);

    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        client.request(get(&server.url("/"))),
    )
    .await;
    assert!(waited.is_err(), "a hanging upstream answered");
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        client.request(get(&server.url("/health"))),
    )
    .await;
    assert!(waited.is_err(), "health answered while hanging");

    // `/_chaos` still answers while everything else hangs.
    let (response, body) = send(
        &client,
        post_json(&server.url("/_chaos"), r#"{"hang":false}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json(&body)["hang"], false);
    let (response, _) = send(&client, get(&server.url("/"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.handle.requests(), 3);
    server.stop().await;
}

#[tokio::test]
async fn reset_closes_the_connection_without_an_answer() {
    let server = Running::start(None).await;
    let client = http1();
    let (response, _) = send(
        &client,
        post_json(&server.url("/_chaos"), r#"{"reset":true}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(get(&server.url("/"))),
    )
    .await
    .expect("the reset is prompt");
    assert!(outcome.is_err(), "a resetting upstream answered");

    server.handle.set(ChaosState::default());
    let (response, _) = send(&client, get(&server.url("/"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn reset_is_a_tcp_rst() {
    let server = Running::start(None).await;
    server.handle.set(ChaosState {
        reset: true,
        ..ChaosState::default()
    });
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: chaos\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer))
        .await
        .expect("the reset is prompt");
    let error = read.expect_err("no orderly close");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(buffer.is_empty(), "no answer before the reset");
    server.stop().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let server = Running::start(Some("h2")).await;
    let client = h2c();
    let (response, body) = send(&client, get(&server.url("/x?y"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(upstream(&response), "h2");
    let body = json(&body);
    assert_eq!(body["path"], "/x");
    assert_eq!(body["query"], "y");

    let (response, body) = send(&client, get(&server.url("/bytes/200000"))).await;
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(body.len(), 200_000);

    let (response, _) = send(
        &client,
        post_json(&server.url("/_chaos"), r#"{"error_rate":1}"#),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (response, _) = send(&client, get(&server.url("/"))).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    server.stop().await;
}

#[tokio::test]
async fn h2c_echo_round_trips() {
    let server = Running::start(None).await;
    echo_round_trip(h2c(), &server).await;
    server.stop().await;
}

#[tokio::test]
async fn other_methods_without_a_body_get_the_description() {
    let server = Running::start(None).await;
    let request = Request::builder()
        .method(Method::DELETE)
        .uri(server.url("/thing/1"))
        .body(empty())
        .expect("request");
    let (response, body) = send(&http1(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json(&body);
    assert_eq!(body["method"], "DELETE");
    assert_eq!(body["path"], "/thing/1");
    server.stop().await;
}

#[tokio::test]
async fn run_returns_after_shutdown() {
    let server = Running::start(None).await;
    // An idle keep-alive connection does not hold the shutdown up.
    let client = http1();
    let (response, _) = send(&client, get(&server.url("/"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let addr = server.addr;
    server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn shutdown_gives_up_hanging_requests() {
    let server = Running::start(None).await;
    server.handle.set(ChaosState {
        hang: true,
        ..ChaosState::default()
    });
    let client = http1();
    let hanging = tokio::spawn({
        let client = client.clone();
        let url = server.url("/");
        async move { client.request(get(&url)).await.map(|_| ()) }
    });
    // Wait until the request is in (counted), without sleeping for it.
    while server.handle.requests() == 0 {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    server.stop().await;
    // Shutting down does not wait out the 5 s grace period for a request that never ends.
    assert!(started.elapsed() < Duration::from_secs(4));
    let outcome = tokio::time::timeout(Duration::from_secs(5), hanging)
        .await
        .expect("the hanging request ends")
        .expect("task");
    assert!(outcome.is_err(), "a hanging request was answered");
}
