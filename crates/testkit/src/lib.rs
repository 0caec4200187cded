//! sekisho-testkit: what sekisho's tests share (dev-only).
//!
//! What it is for: starting the real `sekisho` binary on port 0 and learning its addresses from
//! its "listening" log line, writing configs to fresh temporary directories, and talking HTTP to
//! it with a real client or raw bytes.
//!
//! What it refuses to do: mock anything that runs here for real, or sleep to synchronise: every
//! wait is for an event (a log line, an answer), bounded by a timeout.
// Dev-only helpers of the tests: a failed step panics the test that called it, as an assert does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

mod raw;
mod scripted;
mod webhook;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
pub use raw::{
    raw_body, raw_exchange, raw_exchange_until_end, raw_status, read_response, RawEnd, RawExchange,
};
pub use scripted::{early_hints_upstream, echo_upstream, head_answering_upstream};
pub use webhook::{next_notification, webhook_receiver, webhook_receiver_on};

/// A fresh directory under the system's temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new, empty directory.
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "sekisho-test-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        // Write then rename, as editors and config managers do, so a reader never sees half.
        let partial = self.path.join(format!(".{name}.partial"));
        std::fs::write(&partial, contents).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `sekisho` process; killed on drop if still running.
#[derive(Debug)]
pub struct Sekisho {
    child: Child,
    /// Traffic listener.
    pub address: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    line_events: mpsc::Receiver<String>,
}

impl Sekisho {
    /// Starts `binary run --config config` and waits (≤ 30 s) for its "listening" line.
    pub fn start(binary: &Path, config: &Path) -> Self {
        Self::start_with(binary, &["run", "--config", config.to_str().unwrap()])
    }

    /// Starts `binary upstream` (a chaos upstream) on a free loopback port, named `name`.
    pub fn start_upstream(binary: &Path, name: &str) -> Self {
        Self::spawn(
            binary,
            &["upstream", "--listen", "127.0.0.1:0", "--name", name],
            "chaos upstream listening",
        )
    }

    /// Kills the process at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts `binary args…` and waits for its "listening" line.
    pub fn start_with(binary: &Path, args: &[&str]) -> Self {
        Self::spawn(binary, args, "listening")
    }

    fn spawn(binary: &Path, args: &[&str], ready_message: &str) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .env("SEKISHO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (sender, line_events) = mpsc::channel();
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    let _ = sender.send(line);
                }
            });
        }
        let mut process = Self {
            child,
            address: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            lines,
            line_events,
        };
        let listening = process
            .wait_for_log(
                |json| json["message"] == ready_message,
                Duration::from_secs(30),
            )
            .unwrap_or_else(|| panic!("sekisho did not start:\n{}", process.log()));
        process.address = listening["address"].as_str().unwrap().parse().unwrap();
        if let Some(admin) = listening["admin"].as_str() {
            process.admin = admin.parse().unwrap();
        }
        process
    }

    /// Waits for a JSON log line matching `predicate`; lines already seen count too.
    pub fn wait_for_log(
        &mut self,
        predicate: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        let matches = |line: &str| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(|json| predicate(json))
        };
        if let Some(found) = self.lines.lock().unwrap().iter().find_map(|l| matches(l)) {
            return Some(found);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.line_events.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = matches(&line) {
                        return Some(found);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (≤ `timeout`) for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The admin base URL.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The traffic base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

impl Drop for Sekisho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The contract error code of a gateway-made answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// A pooled HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client speaking HTTP/2 with prior knowledge.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `method url` with `headers` and `body`, reads the answer whole; panics on a transport
/// error.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    try_send(client, method, url, headers, body)
        .await
        .unwrap_or_else(|error| panic!("{method} {url}: {error}"))
}

/// Like [`send`], but a transport error (connection closed, reset, no answer within 30 s) is
/// returned rather than a panic.
pub async fn try_send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Answer, String> {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// GET `url`.
pub async fn get(url: &str) -> Answer {
    send(&client(), "GET", url, &[], Bytes::new()).await
}

/// A chaos upstream running in this process on a port of its own.
#[derive(Debug)]
pub struct Upstream {
    /// Its address.
    pub address: SocketAddr,
    /// Reads and changes its chaos.
    pub handle: sekisho_load::ChaosHandle,
}

/// Starts a chaos upstream named `name` on 127.0.0.1, port 0 (inside a tokio runtime).
pub async fn chaos_upstream(name: &str) -> Upstream {
    let server = sekisho_load::ChaosServer::bind(sekisho_load::ChaosOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        latency: Duration::ZERO,
        error_rate: 0.0,
        name: Some(name.to_owned()),
    })
    .await
    .unwrap();
    let address = server.local_addr();
    let handle = server.handle();
    tokio::spawn(server.run(std::future::pending()));
    Upstream { address, handle }
}

/// A gateway serving in this process; [`InProcess::stop`] drains it.
#[derive(Debug)]
pub struct InProcess {
    /// The traffic address.
    pub address: SocketAddr,
    /// The gateway handle.
    pub gateway: sekisho_gateway::Gateway,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

impl InProcess {
    /// Parses `config` (which should listen on port 0) and serves it.
    pub async fn start(config: &str) -> Self {
        let config = sekisho_config::parse(config, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        let gateway = sekisho_gateway::Gateway::new(config, None).unwrap();
        let listener = gateway.bind().await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = gateway.clone();
        let served = tokio::spawn(async move {
            serving
                .serve_here(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            address,
            gateway,
            stop: Some(stop),
            served,
        }
    }

    /// `http://address/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops accepting and waits (≤ 10 s) for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.served)
            .await
            .expect("drained within 10 s")
            .unwrap();
    }
}

/// What a scripted origin answers: status, headers, body, and how long it takes.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header fields.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// How long the origin takes before answering (a slow dependency).
    pub delay: Duration,
}

impl Reply {
    /// `status` with `body`, at once.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            ..Self::default()
        }
    }

    /// Adds a header field.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answers after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Script = dyn Fn(&http::request::Parts, u64) -> Reply + Send + Sync;

/// An HTTP/1.1 origin on 127.0.0.1, port 0, answering by a script; it counts calls per path.
#[derive(Clone)]
pub struct Origin {
    /// Its address.
    pub address: SocketAddr,
    calls: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("address", &self.address)
            .finish()
    }
}

impl Origin {
    /// Starts an origin whose answer to each request (its body read first) is `script(head, n)`,
    /// `n` counting the calls of the request's path from 1.
    pub async fn start(
        script: impl Fn(&http::request::Parts, u64) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let calls = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let script: Arc<Script> = Arc::new(script);
        let counted = Arc::clone(&calls);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let script = Arc::clone(&script);
                let calls = Arc::clone(&counted);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let script = Arc::clone(&script);
                            let calls = Arc::clone(&calls);
                            async move {
                                // The body is read whole before the answer, as a real
                                // application does (one answered unread races its close
                                // against the gateway still sending it).
                                let (head, body) = request.into_parts();
                                let _ = body.collect().await;
                                let n = {
                                    let mut calls = calls.lock().unwrap();
                                    let n = calls.entry(head.uri.path().to_owned()).or_insert(0);
                                    *n += 1;
                                    *n
                                };
                                let reply = script(&head, n);
                                if !reply.delay.is_zero() {
                                    tokio::time::sleep(reply.delay).await;
                                }
                                let mut response =
                                    hyper::Response::new(Full::new(Bytes::from(reply.body)));
                                *response.status_mut() =
                                    hyper::StatusCode::from_u16(reply.status).unwrap();
                                for (name, value) in reply.headers {
                                    response.headers_mut().append(
                                        http::HeaderName::try_from(name).unwrap(),
                                        http::HeaderValue::try_from(value).unwrap(),
                                    );
                                }
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { address, calls }
    }

    /// Calls of `path` so far.
    pub fn calls(&self, path: &str) -> u64 {
        self.calls.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Runs `promtool ARGS…` with `stdin` on its input and asserts it succeeds; when promtool is not
/// installed the check is skipped, unless SEKISHO_REQUIRE_PROMTOOL is set (scripts/test installs
/// promtool and sets it, so CI never skips).
pub fn promtool(args: &[&str], stdin: &str) {
    use std::io::Write;
    use std::process::Stdio;
    let Ok(mut child) = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("SEKISHO_REQUIRE_PROMTOOL").is_none(),
            "promtool is required but missing"
        );
        eprintln!("SKIPPED: promtool is not installed; run scripts/test to check with it");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
