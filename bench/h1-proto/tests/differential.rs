//! Differential test against hyper: the same generated request heads (and chunked bodies) go
//! to `head::read_request` and to hyper's HTTP/1 server. The fast path may refuse what hyper
//! accepts — a refusal is where the real gateway hands the connection to hyper — but whatever
//! it accepts, hyper must accept too, with the same framing (no body, N bytes, or chunked), and
//! a chunked body whose end `ChunkedScanner` finds must be one hyper reads without error.
//!
//! Seeded (`H1_DIFF_SEED`, `H1_DIFF_CASES`): a failure prints the case and its seed. This is
//! the seed of the differential fuzz target issue 20 asks for, not the target itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use h1_proto::chunked::ChunkedScanner;
use h1_proto::head::{read_request, ClientFacts, Edits, Framing};
use h1_proto::ids::RequestIds;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Bytes, Incoming};
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::Rng;

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "POST", "POST", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "CONNECT",
    "get", "PO ST",
];
const TARGETS: &[&str] = &[
    "/",
    "/a?b=c",
    "/x/y",
    "*",
    "http://h/x",
    "h:443",
    "/a b",
    "//x",
    "/%7e",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.0",
    "HTTP/2.0", "HTTP/1.2", "http/1.1",
];
const HEADERS: &[(&str, &[&str])] = &[
    ("Host", &["h", "h", "h:80", "", "a b"]),
    (
        "Content-Length",
        &[
            "0",
            "5",
            "5",
            "05",
            " 5",
            "5 ",
            "+5",
            "-1",
            "5,5",
            "5, 5",
            "",
            "18446744073709551616",
            "1e3",
        ],
    ),
    (
        "Transfer-Encoding",
        &[
            "chunked",
            "chunked",
            "Chunked",
            " chunked",
            "chunked, chunked",
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "chunked;q=1",
            "",
        ],
    ),
    (
        "Connection",
        &[
            "close",
            "keep-alive",
            "upgrade",
            "close, X-A",
            "Keep-Alive, Upgrade",
            "",
        ],
    ),
    ("Upgrade", &["websocket", "h2c"]),
    ("Expect", &["100-continue", "100-Continue", "nope"]),
    ("X-A", &["1", "", "a\tb", "caf\u{e9}", "x y"]),
    ("Keep-Alive", &["timeout=5"]),
    ("X-Forwarded-For", &["10.0.0.1", "10.0.0.1, 10.0.0.2"]),
    ("X-Request-Id", &["abc", "a b", ""]),
    ("content-length", &["5", "6"]),
    ("TRANSFER-ENCODING", &["chunked", "CHUNKED"]),
    ("Content-Length ", &["5"]),
    (" Host", &["h"]),
    ("Transfer_Encoding", &["chunked"]),
    ("Accept", &["*/*"]),
];
const CHUNKED_BODIES: &[&str] = &[
    "5\r\nhello\r\n0\r\n\r\n",
    "5;ext=1\r\nhello\r\n0\r\n\r\n",
    "5 \r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    "0\r\n\r\n",
    "000\r\n\r\n",
    "5\nhello\n0\n\n",
    "5\r\nhelloXX0\r\n\r\n",
    "fffffffffffffffff\r\n",
    "-5\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n0\r\n",
    "\r\n",
    "A\r\n0123456789\r\n0\r\n\r\n",
    "a\r\n0123456789\r\n0\r\n\r\n",
    "0x5\r\nhello\r\n0\r\n\r\n",
];

/// A request: a head from the pieces above, sometimes mutated, and a body when it asks one.
fn generate(rng: &mut Rng) -> Vec<u8> {
    let eol = if rng.chance(5) { "\n" } else { "\r\n" };
    let mut head = format!(
        "{} {} {}{eol}",
        rng.pick(METHODS),
        rng.pick(TARGETS),
        rng.pick(VERSIONS)
    );
    if rng.chance(85) {
        head.push_str(&format!("Host: h{eol}"));
    }
    for _ in 0..rng.below(6) {
        let (name, values) = HEADERS[rng.below(HEADERS.len())];
        head.push_str(&format!("{name}: {}{eol}", rng.pick(values)));
        if rng.chance(3) {
            head.push_str(&format!(" folded{eol}"));
        }
    }
    head.push_str(eol);
    let mut raw = head.into_bytes();
    if rng.chance(10) {
        // One byte of the head changed to anything.
        let at = rng.below(raw.len());
        raw[at] = rng.next() as u8;
    }
    let lower = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    if lower.contains("chunked") {
        let mut body = rng.pick(CHUNKED_BODIES).as_bytes().to_vec();
        if rng.chance(30) {
            // One byte of the body changed to anything.
            let at = rng.below(body.len());
            body[at] = rng.next() as u8;
        }
        raw.extend_from_slice(&body);
    } else if lower.contains("content-length") {
        raw.extend_from_slice(b"hello");
    }
    raw
}

/// What the fast path decides: `Err(reason)` when it refuses (or the head is incomplete).
fn ours(raw: &[u8]) -> Result<(Framing, Option<bool>), &'static str> {
    let client = ClientFacts::new(std::net::IpAddr::from([127, 0, 0, 1]));
    let mut edits = Edits::default();
    let head = match read_request(raw, &client, &mut RequestIds::new(), &mut edits) {
        Ok(Some(head)) => head,
        Ok(None) => return Err("incomplete head"),
        Err(refusal) => return Err(refusal.reason),
    };
    // For a chunked body: does the scanner find its end in what was sent (Some(true)), refuse
    // it (Some(false)), or need more (None)?
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

/// What hyper saw: `None` when its service was never called (it refused the head).
#[derive(Debug, Clone, Copy)]
struct HyperSaw {
    /// The body's exact length when hyper knows it (`None`: chunked).
    exact: Option<u64>,
    /// Whether the whole body was read without error.
    body_ok: bool,
}

async fn hyper_on(raw: &[u8]) -> Option<HyperSaw> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let seen: Arc<Mutex<Option<HyperSaw>>> = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let exact = request.body().size_hint().exact();
            let body_ok = request.into_body().collect().await.is_ok();
            if let Ok(mut slot) = record.lock() {
                *slot = Some(HyperSaw { exact, body_ok });
            }
            Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        // The client shuts its side after writing; hyper must still answer what it read.
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let talk = async {
        let _ = client.write_all(raw).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
    };
    let outcome = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(connection, talk)
    })
    .await;
    if std::env::var("H1_DIFF_DEBUG").is_ok() {
        println!(
            "hyper: {:?}",
            outcome
                .as_ref()
                .map(|(served, _)| served.as_ref().map_err(|e| e.to_string()))
        );
    }
    let saw = *seen.lock().ok()?;
    saw
}

#[tokio::test(flavor = "current_thread")]
async fn what_the_fast_path_accepts_hyper_accepts_with_the_same_framing() {
    let seed = std::env::var("H1_DIFF_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5e41_5e10_u64);
    let cases = std::env::var("H1_DIFF_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng(seed);
    let (mut both, mut handed_off, mut both_refuse, mut chunked_checked) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    let mut hand_off_reasons = std::collections::BTreeMap::new();
    for case in 0..cases {
        let raw = generate(&mut rng);
        let shown = || {
            format!(
                "case {case} (seed {seed}): {:?}",
                String::from_utf8_lossy(&raw)
            )
        };
        match (ours(&raw), hyper_on(&raw).await) {
            (Ok((framing, chunked_ok)), Some(saw)) => {
                both += 1;
                let same_framing = match framing {
                    Framing::Empty => saw.exact == Some(0),
                    Framing::Length(length) => saw.exact == Some(length),
                    Framing::Chunked => saw.exact.is_none(),
                    Framing::UntilClose => false,
                };
                if !same_framing {
                    failures.push(format!(
                        "framing {framing:?} vs hyper's {saw:?}: {}",
                        shown()
                    ));
                }
                if let Some(true) = chunked_ok {
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
            (Err(reason), Some(_)) => {
                handed_off += 1;
                *hand_off_reasons.entry(reason).or_insert(0) += 1;
            }
            (Err(_), None) => both_refuse += 1,
        }
    }
    println!(
        "{cases} cases: {both} accepted by both ({chunked_checked} chunked bodies checked), \
         {handed_off} refused here and accepted by hyper (hand-offs), {both_refuse} refused by both"
    );
    println!("hand-offs by reason: {hand_off_reasons:?}");
    assert!(
        both > cases / 10,
        "the generator must produce enough accepted requests"
    );
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
