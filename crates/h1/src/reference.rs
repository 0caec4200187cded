//! hyper as the reference: what a request head is, read by this crate and by hyper's HTTP/1
//! server, in a form the two can be compared in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{parse, Fields, Parsed, MAX_FIELDS};

/// A request as both readers must agree on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: http::Version,
    /// Names and values, in order.
    pub fields: Vec<(String, Vec<u8>)>,
    /// The body's exact length, when known.
    pub body: Option<u64>,
    /// `Expect: 100-continue` was asked (the owned path meets it and leaves the field out of
    /// the request; hyper's keeps it: both are compared without it).
    pub expect_continue: bool,
}

fn seen<B: http_body::Body>(request: &Request<B>) -> Seen {
    Seen {
        method: request.method().to_string(),
        target: request.uri().to_string(),
        version: request.version(),
        fields: request
            .headers()
            .iter()
            .filter(|(name, _)| *name != http::header::EXPECT)
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect(),
        body: request.body().size_hint().exact(),
        expect_continue: request
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue")),
    }
}

/// The request this crate reads from `raw`, if it takes the head.
pub fn owned(raw: &[u8]) -> Option<Seen> {
    let mut fields = Fields::new();
    match parse(raw, MAX_FIELDS, &mut fields) {
        Parsed::Head(head) => {
            let length = (!head.chunked).then_some(head.body_length);
            let expect_continue = head.expect_continue;
            let bytes = Bytes::copy_from_slice(raw.get(..head.len)?);
            // What a refusal decided from the head reads (the gateway's `proxy::early`) is what
            // the request says: so what hyper reads too.
            let (method, path, host) = (
                head.method().clone(),
                head.path(raw).to_owned(),
                head.host(raw, &fields).to_vec(),
            );
            let request = head.request(&bytes, &mut fields, Empty::<Bytes>::new())?;
            let request_host = request.headers().get(http::header::HOST);
            assert!(
                method == *request.method()
                    && path == request.uri().path()
                    && request_host.map(http::HeaderValue::as_bytes) == Some(&host[..]),
                "the head's accessors disagree with its request: {method} {path} {:?} against {:?}",
                String::from_utf8_lossy(&host),
                request
            );
            // The body is the connection's to read (`body_length` bytes after the head).
            Some(Seen {
                body: length,
                expect_continue,
                ..seen(&request)
            })
        }
        Parsed::Partial | Parsed::HandOff => None,
    }
}

/// The request hyper's HTTP/1 server reads from `raw` (sent whole, then the write side shut),
/// or `None` when it refuses the head.
pub async fn hyper_reads(raw: &[u8]) -> Option<Seen> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let record: Arc<Mutex<Option<Seen>>> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&record);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(seen(&request));
        }
        async { Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new())) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let talk = async {
        let _ = client.write_all(raw).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(connection, talk)
    })
    .await;
    let saw = record.lock().ok()?.clone();
    saw
}

/// [`hyper_reads`] on a runtime of its own (for the fuzz target).
pub fn hyper_reads_blocking(raw: &[u8]) -> Option<Seen> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .ok()?;
    runtime.block_on(hyper_reads(raw))
}

/// Compares the two readers on `raw`: `Err` says how they disagree about a head this crate
/// takes (it may leave any head to hyper).
pub fn compare(ours: Option<Seen>, hypers: Option<Seen>) -> Result<bool, String> {
    match (ours, hypers) {
        (Some(ours), Some(hypers)) if ours == hypers => Ok(true),
        (Some(ours), Some(hypers)) => Err(format!("read as {ours:?}, hyper {hypers:?}")),
        (Some(ours), None) => Err(format!("taken as {ours:?}, refused by hyper")),
        (None, _) => Ok(false),
    }
}

/// An answer as both readers must agree on it: the final head (interim ones skipped), the body
/// as delimited by its framing, the trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenResponse {
    pub status: u16,
    pub version: http::Version,
    /// Names and values, in order.
    pub fields: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
}

fn pairs(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect()
}

/// The answer this crate reads from `raw` (the whole of what the target sent before it closed)
/// to a `HEAD` request when `after_head`, or `None` when it refuses it or the body is cut.
pub fn owned_response(raw: &[u8], after_head: bool) -> Option<SeenResponse> {
    use crate::{parse_response, Chunk, ChunkedDecoder, Framing};
    let mut rest = bytes::BytesMut::from(raw);
    let mut fields = Fields::new();
    loop {
        let head = parse_response(&rest, after_head, &mut fields).ok()??;
        let bytes = rest.split_to(head.len).freeze();
        let response = head.response(&bytes, &mut fields).ok()?;
        if head.is_interim() {
            continue;
        }
        let (body, trailers) = match head.framing {
            Framing::None => (Vec::new(), http::HeaderMap::new()),
            Framing::Length(length) => {
                let length = usize::try_from(length).ok()?;
                (rest.get(..length)?.to_vec(), http::HeaderMap::new())
            }
            Framing::UntilClose => (rest.to_vec(), http::HeaderMap::new()),
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut body = Vec::new();
                loop {
                    match decoder.next(&mut rest).ok()?? {
                        Chunk::Data(data) => body.extend_from_slice(&data),
                        Chunk::End(trailers) => break (body, trailers),
                    }
                }
            }
        };
        return Some(SeenResponse {
            status: response.status().as_u16(),
            version: response.version(),
            fields: pairs(response.headers()),
            body,
            trailers: pairs(&trailers),
        });
    }
}

/// The answer hyper's HTTP/1 client reads when the target sends `raw` and closes (after a
/// `HEAD` request when `after_head`), or `None` when it refuses it or its body.
pub async fn hyper_reads_response(raw: &[u8], after_head: bool) -> Option<SeenResponse> {
    use http_body_util::BodyExt;
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
            .await
            .ok()?;
    let method = if after_head { "HEAD" } else { "GET" };
    let request = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "h")
        .body(Empty::<Bytes>::new())
        .ok()?;
    let target = async {
        // The request head, then the answer, then the close.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match server.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let _ = server.write_all(raw).await;
        let _ = server.shutdown().await;
    };
    let exchange = async {
        let response = sender.send_request(request).await.ok()?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.ok()?;
        let trailers = collected.trailers().map(pairs).unwrap_or_default();
        Some(SeenResponse {
            status: parts.status.as_u16(),
            version: parts.version,
            fields: pairs(&parts.headers),
            body: collected.to_bytes().to_vec(),
            trailers,
        })
    };
    let outcome = tokio::time::timeout(Duration::from_secs(2), async {
        let (_, _, seen) = tokio::join!(connection, target, exchange);
        seen
    })
    .await;
    outcome.ok().flatten()
}

/// [`hyper_reads_response`] on a runtime of its own (for a fuzz target).
pub fn hyper_reads_response_blocking(raw: &[u8], after_head: bool) -> Option<SeenResponse> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .ok()?;
    runtime.block_on(hyper_reads_response(raw, after_head))
}

/// xorshift64*: a seeded generator, enough for picking pieces of generated messages.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `bound`.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// `percent` times in a hundred, one byte of `raw` replaced by a random one.
    pub fn mutate(&mut self, raw: &mut [u8], percent: usize) {
        if self.chance(percent) && !raw.is_empty() {
            let at = self.below(raw.len());
            raw[at] = self.next_u64() as u8;
        }
    }
}

/// A differential test's seed and number of cases: `H1_DIFF_SEED` and `H1_DIFF_CASES`, or the
/// test's defaults.
pub fn seed_and_cases(seed: u64, cases: usize) -> (u64, usize) {
    let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    (
        read("H1_DIFF_SEED").unwrap_or(seed),
        read("H1_DIFF_CASES").map_or(cases, |c| usize::try_from(c).unwrap_or(cases)),
    )
}
