//! Differential test against hyper: generated request heads (some mutated byte by byte) go to
//! the owned path's `head::parse` and to hyper's HTTP/1 server. The owned path may leave a head
//! to hyper — that is a hand-off, which changes nothing — but a head it takes, hyper must take
//! too, with the same method, target, version, fields in the same order and body length.
//!
//! Seeded (`H1_DIFF_SEED`, `H1_DIFF_CASES`): a failure prints the case and its seed.

use sekisho_h1::reference::{compare, hyper_reads, owned, seed_and_cases, Rng};

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "GET", "HEAD", "DELETE", "OPTIONS", "POST", "CONNECT", "get", "PO ST",
    "X-CUSTOM",
];
const TARGETS: &[&str] = &[
    "/",
    "/",
    "/a?b=c",
    "/x/y",
    "*",
    "http://h/x",
    "h:443",
    "/a b",
    "//x",
    "/%7e",
    "/a#f",
    "/~u/(x)",
    "/a?b=c&d=%20",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2",
    "http/1.1",
];
const FIELDS: &[(&str, &[&str])] = &[
    ("Host", &["h", "h", "h:80", "", "a b"]),
    (
        "Content-Length",
        &["0", "0", "00", " 0", "0 ", "5", "0,0", ""],
    ),
    ("Transfer-Encoding", &["chunked", "identity", ""]),
    (
        "Connection",
        &["close", "keep-alive", "upgrade", "close, X-A", "Close", ""],
    ),
    ("Upgrade", &["websocket"]),
    ("Expect", &["100-continue", "nope"]),
    ("X-A", &["1", "", "a\tb", "caf\u{e9}", "x y", " padded "]),
    ("Keep-Alive", &["timeout=5"]),
    ("X-Forwarded-For", &["10.0.0.1", "10.0.0.1, 10.0.0.2"]),
    ("X-Request-Id", &["abc", "a b", ""]),
    ("Accept", &["*/*"]),
    ("Cookie", &["a=1; b=2"]),
    ("Content-Length ", &["0"]),
    (" Host", &["h"]),
    ("X_Under", &["1"]),
];

/// Pieces of heads the owned path takes (half the cases are made of these only, before the
/// byte mutation).
const PLAIN_METHODS: &[&str] = &["GET", "HEAD", "DELETE", "OPTIONS", "X-CUSTOM"];
const PLAIN_TARGETS: &[&str] = &["/", "/a?b=c", "/x/y", "/%7e", "/~u/(x)", "/a?b=c&d=%20"];
const PLAIN_FIELDS: &[usize] = &[1, 3, 6, 7, 8, 9, 10, 11];

fn generate(rng: &mut Rng) -> Vec<u8> {
    let plain = rng.chance(50);
    let eol = if !plain && rng.chance(5) {
        "\n"
    } else {
        "\r\n"
    };
    let mut head = if plain {
        format!(
            "{} {} HTTP/1.1{eol}",
            rng.pick(PLAIN_METHODS),
            rng.pick(PLAIN_TARGETS)
        )
    } else {
        format!(
            "{} {} {}{eol}",
            rng.pick(METHODS),
            rng.pick(TARGETS),
            rng.pick(VERSIONS)
        )
    };
    if rng.chance(90) {
        head.push_str(&format!("Host: h{eol}"));
    }
    for _ in 0..rng.below(6) {
        let index = if plain {
            PLAIN_FIELDS[rng.below(PLAIN_FIELDS.len())]
        } else {
            rng.below(FIELDS.len())
        };
        let (name, values) = FIELDS[index];
        head.push_str(&format!("{name}: {}{eol}", rng.pick(values)));
        if !plain && rng.chance(3) {
            head.push_str(&format!(" folded{eol}"));
        }
    }
    head.push_str(eol);
    let mut raw = head.into_bytes();
    rng.mutate(&mut raw, 15);
    raw
}

#[tokio::test(flavor = "current_thread")]
async fn what_the_owned_path_takes_hyper_takes_and_reads_the_same_way() {
    let (seed, cases) = seed_and_cases(0x5e41_5e10, 3000);
    let mut rng = Rng(seed);
    let (mut taken, mut handed_off) = (0, 0);
    let mut failures = Vec::new();
    for case in 0..cases {
        let raw = generate(&mut rng);
        let shown = || {
            format!(
                "case {case} (seed {seed}): {:?}",
                String::from_utf8_lossy(&raw)
            )
        };
        match compare(owned(&raw), hyper_reads(&raw).await) {
            Ok(true) => taken += 1,
            Ok(false) => handed_off += 1,
            Err(disagreement) => failures.push(format!("{disagreement}: {}", shown())),
        }
    }
    println!("{cases} cases: {taken} taken by the owned path, {handed_off} left to hyper");
    assert!(
        taken > cases / 5,
        "the generator must produce enough heads the owned path takes ({taken})"
    );
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
