//! Differential test against hyper's client: generated answers (some mutated byte by byte) go
//! to `parse_response` with the body read by its framing, and to hyper's HTTP/1 client after a
//! `GET` or a `HEAD`. The gateway may refuse an answer hyper takes (a 502 where hyper would have
//! passed it on), never the other way: an answer it takes, hyper must take with the same
//! status, version, fields in the same order, body and trailers.
//!
//! Seeded (`H1_DIFF_SEED`, `H1_DIFF_CASES`): a failure prints the case and its seed.

use sekisho_h1::reference::{hyper_reads_response, owned_response, seed_and_cases, Rng};

const STATUS_LINES: &[&str] = &[
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200 OK",
    "HTTP/1.1 404 Not Found",
    "HTTP/1.1 204 No Content",
    "HTTP/1.1 304 Not Modified",
    "HTTP/1.1 200",
    "HTTP/1.1 299 Custom",
    "HTTP/1.0 200 OK",
    "HTTP/1.1 101 Switching Protocols",
    "HTTP/2.0 200 OK",
    "HTTP/1.1 99 Low",
    "HTTP/1.1 1000 High",
    "http/1.1 200 OK",
];
const FIELDS: &[(&str, &[&str])] = &[
    (
        "Content-Length",
        &[
            "0", "5", "5", "11", "05", "5, 5", "5,6", " 5", "", "-1", "99999",
        ],
    ),
    (
        "Transfer-Encoding",
        &[
            "chunked",
            "chunked",
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "Chunked",
        ],
    ),
    (
        "Connection",
        &["close", "keep-alive", "Close", "x-a, close"],
    ),
    ("X-A", &["1", "", "a\tb", "caf\u{e9}", " padded "]),
    ("Set-Cookie", &["a=1", "b=2; Path=/"]),
    ("Cache-Control", &["max-age=60"]),
    ("ETag", &["\"v1\""]),
    ("Content-Length ", &["5"]),
    ("X_Under", &["1"]),
];
const BODIES: &[&str] = &[
    "",
    "hello",
    "hello world",
    "5\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
    "5;ext=1\r\nhello\r\n0\r\n\r\n",
    "5\nhello\n0\n\n",
    "0\r\n\r\n",
    "Z\r\n",
];

fn generate(rng: &mut Rng) -> Vec<u8> {
    let plain = rng.chance(50);
    let eol = if !plain && rng.chance(5) {
        "\n"
    } else {
        "\r\n"
    };
    let mut raw = String::new();
    if rng.chance(10) {
        raw.push_str(&format!(
            "HTTP/1.1 103 Early Hints{eol}Link: </s.css>{eol}{eol}"
        ));
    }
    let status = if plain {
        STATUS_LINES[rng.below(3)]
    } else {
        rng.pick(STATUS_LINES)
    };
    raw.push_str(&format!("{status}{eol}"));
    for _ in 0..rng.below(5) {
        let index = if plain {
            rng.below(7)
        } else {
            rng.below(FIELDS.len())
        };
        let (name, values) = FIELDS[index];
        raw.push_str(&format!("{name}: {}{eol}", rng.pick(values)));
        if !plain && rng.chance(3) {
            raw.push_str(&format!(" folded{eol}"));
        }
    }
    raw.push_str(eol);
    raw.push_str(rng.pick(BODIES));
    let mut raw = raw.into_bytes();
    rng.mutate(&mut raw, 15);
    raw
}

#[tokio::test(flavor = "current_thread")]
async fn an_answer_the_owned_client_takes_hyper_takes_and_reads_the_same_way() {
    let (seed, cases) = seed_and_cases(0x5e41_5e11, 2000);
    let mut rng = Rng(seed);
    let (mut taken, mut refused_by_us) = (0, 0);
    let mut failures = Vec::new();
    for case in 0..cases {
        let raw = generate(&mut rng);
        let after_head = rng.chance(10);
        let ours = owned_response(&raw, after_head);
        let hypers = hyper_reads_response(&raw, after_head).await;
        let shown = || {
            format!(
                "case {case} (seed {seed}, after HEAD: {after_head}): {:?}",
                String::from_utf8_lossy(&raw)
            )
        };
        match (ours, hypers) {
            (Some(ours), Some(hypers)) if ours == hypers => taken += 1,
            (Some(ours), Some(hypers)) => {
                failures.push(format!("read as {ours:?}, hyper {hypers:?}: {}", shown()))
            }
            (Some(ours), None) => {
                failures.push(format!("taken as {ours:?}, refused by hyper: {}", shown()))
            }
            (None, Some(_)) => refused_by_us += 1,
            (None, None) => {}
        }
    }
    println!(
        "{cases} answers: {taken} taken by both, {refused_by_us} refused only by the owned client"
    );
    assert!(
        taken > cases / 5,
        "the generator must produce enough answers both take ({taken})"
    );
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
