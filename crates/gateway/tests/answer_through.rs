//! An upstream answer's fields written through as read (`sekisho_h1::RawFields`, the owned
//! HTTP/1.1 path with no step reading them) against the same answer put in a map first (a
//! route with a response header rule): for every head below the client gets the same status
//! line, the same fields and the same body. The fields are compared as a list sorted by name
//! (the order of one name's values kept): the map path reorders fields when it removes one
//! (`HeaderMap::remove` swaps the last entry into its place), the only difference allowed.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use sekisho_testkit::InProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The upstream's `Date`, told from the gateway's own.
const UPSTREAM_DATE: &str = "Thu, 01 Jan 2026 00:00:00 GMT";

/// Each answer the upstream gives (by the last segment of the path), and whether it closes
/// the connection after it.
const ANSWERS: &[(&[u8], bool)] = &[
    (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nServer: up\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\nok",
        false,
    ),
    // No date; names in any case; a name's values in order.
    (
        b"HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nSET-COOKIE: a=1\r\nSet-Cookie: b=2\r\ncontent-length: 3\r\n\r\nabc",
        false,
    ),
    // Chunked, with a trailer: the framing is this hop's.
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nX-B: b\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
        false,
    ),
    // Hop-by-hop fields of every kind.
    (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nTE: trailers\r\nProxy-Authenticate: Basic\r\nContent-Length: 1\r\n\r\nk",
        false,
    ),
    // `Connection` naming a field: that field is hop-by-hop too.
    (
        b"HTTP/1.1 200 OK\r\nConnection: x-secret, close\r\nX-Secret: s\r\nX-Kept: k\r\nContent-Length: 1\r\n\r\nc",
        true,
    ),
    // Fields the gateway sets itself replace the upstream's; a name near one of them does not.
    (
        b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream-id\r\nRateLimit-Limit: 5\r\nX-Request-Ic: near\r\nContent-Length: 0\r\n\r\n",
        false,
    ),
    // A length stated twice, the same.
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\nX-L: 2\r\n\r\nll",
        false,
    ),
    // No body, whatever the length says.
    (
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-C: c\r\n\r\n",
        false,
    ),
    (
        b"HTTP/1.1 304 Not Modified\r\nETag: \"v\"\r\nCache-Control: max-age=1\r\n\r\n",
        false,
    ),
    // Until the upstream closes.
    (b"HTTP/1.0 200 OK\r\nX-D: d\r\n\r\nuntil close", true),
    // Empty and padded values, a byte past ASCII.
    (
        b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Obs: caf\xe9\r\nX-Spaces:   padded   \r\nContent-Length: 1\r\n\r\no",
        false,
    ),
    (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nz",
        true,
    ),
];

async fn upstream() -> SocketAddr {
    sekisho_testkit::head_answering_upstream(|head| {
        let path = head.split(' ').nth(1).unwrap_or("/");
        let case: usize = path.rsplit('/').next().unwrap().parse().unwrap();
        let (answer, close) = ANSWERS[case];
        (answer.to_vec(), close)
    })
    .await
}

/// `method path` with a fixed request id, on a connection of its own the gateway closes after
/// the answer: everything the client got.
async fn exchange(gateway: &InProcess, method: &str, path: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(gateway.address).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nX-Request-Id: fixed-id\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    answer
}

/// An answer as compared: status line, fields (name, value), body.
type Seen = (String, Vec<(String, Vec<u8>)>, Vec<u8>);

/// The status line, the fields sorted by name (each name's values in order) with the
/// gateway's own clock readings masked, and the body.
fn normalized(answer: &[u8]) -> Seen {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(answer)));
    let mut lines = answer[..end].split(|&b| b == b'\n');
    let status = String::from_utf8_lossy(lines.next().unwrap())
        .trim_end()
        .to_owned();
    let mut fields: Vec<(String, Vec<u8>)> = lines
        .map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':').unwrap();
            let name = String::from_utf8(line[..colon].to_vec()).unwrap();
            let mut value = line[colon + 1..].trim_ascii().to_vec();
            let masked =
                (name == "date" && value != UPSTREAM_DATE.as_bytes()) || name == "ratelimit-reset";
            if masked {
                value = b"<clock>".to_vec();
            }
            (name, value)
        })
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    (status, fields, answer[end + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_written_through_is_the_answer_written_from_a_map() {
    let target = upstream().await;
    let limit = "[routes.rate_limit]\nalgorithm = \"fixed_window\"\nkey = \"client_ip\"\n\
                 limit = 100000\nwindow = \"3600s\"\n";
    let gateway = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.up]\ntargets = [\"{target}\"]\n\
         [[routes]]\nname = \"through\"\npath_prefix = \"/through/\"\nupstream = \"up\"\n{limit}\
         [[routes]]\nname = \"mapped\"\npath_prefix = \"/mapped/\"\nupstream = \"up\"\n{limit}\
         [routes.headers]\nresponse_remove = [\"x-never-sent\"]\n"
    ))
    .await;
    let mut compared = 0;
    for case in 0..ANSWERS.len() {
        for method in ["GET", "HEAD"] {
            let through = exchange(&gateway, method, &format!("/through/{case}")).await;
            let mapped = exchange(&gateway, method, &format!("/mapped/{case}")).await;
            let (through, mapped) = (normalized(&through), normalized(&mapped));
            assert_eq!(through, mapped, "{method} answer {case}");
            compared += 1;
        }
    }
    assert_eq!(compared, 2 * ANSWERS.len());

    // What the comparison rests on, seen once: the gateway's fields replace the upstream's,
    // hop-by-hop ones and those `Connection` names are gone, the rest is there.
    let (_, fields, _) = normalized(&exchange(&gateway, "GET", "/through/5").await);
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    assert!(fields.contains(&("x-request-id".to_owned(), b"fixed-id".to_vec())));
    assert!(fields.contains(&("x-request-ic".to_owned(), b"near".to_vec())));
    assert!(!fields.contains(&("ratelimit-limit".to_owned(), b"5".to_vec())));
    assert_eq!(names.iter().filter(|&&n| n == "x-request-id").count(), 1);
    let (_, fields, _) = normalized(&exchange(&gateway, "GET", "/through/4").await);
    assert!(fields.iter().any(|(name, _)| name == "x-kept"));
    assert!(!fields.iter().any(|(name, _)| name == "x-secret"));
    let (_, fields, _) = normalized(&exchange(&gateway, "GET", "/through/3").await);
    for hop in [
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "proxy-authenticate",
    ] {
        assert!(!fields.iter().any(|(name, _)| name == hop), "{hop}");
    }
    gateway.stop().await;
}
