//! Differential test of response heads against hyper's HTTP/1 client: generated responses go to
//! `head::read_response` and to a hyper client connection that sent `GET /` (or `HEAD /`).
//! Whatever the fast path accepts as a final answer, hyper must accept, with the same framing
//! class (no body, N bytes, or unknown length: chunked or until close), and a chunked body whose
//! end `ChunkedScanner` finds must be one hyper reads without error.
//!
//! Seeded (`H1_DIFF_SEED`, `H1_DIFF_CASES`), like `differential.rs`.

use std::time::Duration;

use h1_proto::chunked::ChunkedScanner;
use h1_proto::head::{read_request, read_response, ClientFacts, Edits, Framing, RequestHead};
use h1_proto::ids::RequestIds;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Bytes};
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::Rng;

const STATUS_LINES: &[&str] = &[
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200 OK",
    "HTTP/1.1 404 Not Found",
    "HTTP/1.0 200 OK",
    "HTTP/1.1 204 No Content",
    "HTTP/1.1 304 Not Modified",
    "HTTP/1.1 101 Switching Protocols",
    "HTTP/1.1 200",
    "HTTP/1.1 200 ",
    "HTTP/1.1 2000 OK",
    "HTTP/1.1 099 Low",
    "HTTP/2.0 200 OK",
    "HTTP/1.1 200 caf\u{e9}",
];
const HEADERS: &[(&str, &[&str])] = &[
    (
        "Content-Length",
        &[
            "0",
            "5",
            "5",
            "05",
            " 5",
            "+5",
            "-1",
            "5,5",
            "",
            "99999999999999999999",
        ],
    ),
    (
        "Transfer-Encoding",
        &[
            "chunked",
            "chunked",
            "Chunked",
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "chunked, chunked",
        ],
    ),
    (
        "Connection",
        &["close", "keep-alive", "upgrade", "close, X-A"],
    ),
    ("Content-Type", &["text/plain", ""]),
    ("X-A", &["1", "a\tb", "x y"]),
    ("Keep-Alive", &["timeout=5"]),
    ("content-length", &["5", "6"]),
    ("Upgrade", &["websocket"]),
    ("Trailer", &["T"]),
];
const CHUNKED_BODIES: &[&str] = &[
    "5\r\nhello\r\n0\r\n\r\n",
    "5;ext=1\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    "0\r\n\r\n",
    "5\nhello\n0\n\n",
    "5\r\nhelloXX0\r\n\r\n",
    "fffffffffffffffff\r\n",
    "A\r\n0123456789\r\n0\r\n\r\n",
];

fn generate(rng: &mut Rng) -> Vec<u8> {
    let eol = if rng.chance(5) { "\n" } else { "\r\n" };
    let mut head = format!("{}{eol}", rng.pick(STATUS_LINES));
    for _ in 0..rng.below(5) {
        let (name, values) = HEADERS[rng.below(HEADERS.len())];
        head.push_str(&format!("{name}: {}{eol}", rng.pick(values)));
        if rng.chance(3) {
            head.push_str(&format!(" folded{eol}"));
        }
    }
    head.push_str(eol);
    let mut raw = head.into_bytes();
    if rng.chance(10) {
        let at = rng.below(raw.len());
        raw[at] = rng.next() as u8;
    }
    let lower = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    if lower.contains("chunked") {
        let mut body = rng.pick(CHUNKED_BODIES).as_bytes().to_vec();
        if rng.chance(30) {
            let at = rng.below(body.len());
            body[at] = rng.next() as u8;
        }
        raw.extend_from_slice(&body);
    } else {
        raw.extend_from_slice(b"hello");
    }
    raw
}

fn request(method: &str) -> RequestHead {
    let raw = format!("{method} / HTTP/1.1\r\nHost: h\r\n\r\n");
    let client = ClientFacts::new(std::net::IpAddr::from([127, 0, 0, 1]));
    match read_request(
        raw.as_bytes(),
        &client,
        &mut RequestIds::new(),
        &mut Edits::default(),
    ) {
        Ok(Some(head)) => head,
        other => panic!("{other:?}"),
    }
}

/// The fast path's decision on a final answer: `Err` when it refuses it (or it is interim or
/// incomplete).
fn ours(raw: &[u8], request: &RequestHead) -> Result<(Framing, Option<bool>), &'static str> {
    let head = match read_response(raw, request, &mut Edits::default()) {
        Ok(Some(head)) if head.interim => return Err("interim"),
        Ok(Some(head)) => head,
        Ok(None) => return Err("incomplete head"),
        Err(refusal) => return Err(refusal.reason),
    };
    let chunked_ok = (head.framing == Framing::Chunked).then(|| {
        let mut scanner = ChunkedScanner::new();
        match scanner.scan(&raw[head.head_len..]) {
            Ok(_) if scanner.is_done() => Some(true),
            Ok(_) => None,
            Err(_) => Some(false),
        }
    });
    Ok((head.framing, chunked_ok.flatten()))
}

#[derive(Debug, Clone, Copy)]
struct HyperSaw {
    exact: Option<u64>,
    body_ok: bool,
}

/// A hyper client connection sends `method /` and reads `raw` as the answer.
async fn hyper_on(raw: &[u8], method: &str) -> Option<HyperSaw> {
    let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client_io))
                .await
                .ok()?;
        let request = Request::builder()
            .method(method)
            .uri("/")
            .header("host", "h")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let talk = async {
            let response = sender.send_request(request).await.ok()?;
            let exact = response.body().size_hint().exact();
            let body_ok = response.into_body().collect().await.is_ok();
            Some(HyperSaw { exact, body_ok })
        };
        let (saw, _) = tokio::join!(talk, connection);
        saw
    };
    let upstream = async {
        let mut sent = [0u8; 1024];
        let _ = server_io.read(&mut sent).await;
        let _ = server_io.write_all(raw).await;
        let _ = server_io.shutdown().await;
        // Keep the pipe open until the client is done reading.
        let _ = server_io.read(&mut sent).await;
    };
    let outcome = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(exchange, upstream).0
    })
    .await;
    outcome.ok().flatten()
}

#[tokio::test(flavor = "current_thread")]
async fn what_the_fast_path_accepts_of_an_answer_hyper_accepts_with_the_same_framing() {
    let seed = std::env::var("H1_DIFF_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5e41_5e10_u64);
    let cases = std::env::var("H1_DIFF_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(2000);
    let mut rng = Rng(seed);
    let (get, head) = (request("GET"), request("HEAD"));
    let (mut both, mut handed_off, mut both_refuse, mut chunked_checked) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for case in 0..cases {
        let raw = generate(&mut rng);
        let (method, request) = if rng.chance(10) {
            ("HEAD", &head)
        } else {
            ("GET", &get)
        };
        let shown = || {
            format!(
                "case {case} (seed {seed}, {method}): {:?}",
                String::from_utf8_lossy(&raw)
            )
        };
        match (ours(&raw, request), hyper_on(&raw, method).await) {
            (Ok((framing, chunked_ok)), Some(saw)) => {
                both += 1;
                let same_framing = match framing {
                    Framing::Empty => saw.exact == Some(0),
                    Framing::Length(length) => saw.exact == Some(length),
                    Framing::Chunked | Framing::UntilClose => saw.exact.is_none(),
                };
                if !same_framing {
                    failures.push(format!(
                        "framing {framing:?} vs hyper's {saw:?}: {}",
                        shown()
                    ));
                }
                if chunked_ok == Some(true) {
                    chunked_checked += 1;
                    if !saw.body_ok {
                        failures.push(format!(
                            "chunked body accepted here, refused by hyper: {}",
                            shown()
                        ));
                    }
                }
            }
            (Ok(decision), None) => {
                failures.push(format!(
                    "accepted here ({decision:?}), refused by hyper: {}",
                    shown()
                ));
            }
            (Err(_), Some(_)) => handed_off += 1,
            (Err(_), None) => both_refuse += 1,
        }
    }
    println!(
        "{cases} answers: {both} accepted by both ({chunked_checked} chunked bodies checked), \
         {handed_off} refused here and accepted by hyper, {both_refuse} refused by both"
    );
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        both > cases / 10,
        "the generator must produce enough accepted answers"
    );
}
