//! Tests of `head`: the forwarded bytes, the framing, the refusals.

use super::*;

fn client() -> ClientFacts {
    ClientFacts::new(
        "192.0.2.7"
            .parse()
            .unwrap_or(std::net::IpAddr::from([0; 4])),
    )
}

/// The head a request becomes upstream, and what was read of it.
fn forwarded(raw: &[u8]) -> Result<(String, RequestHead, Edits), Refusal> {
    let mut edits = Edits::default();
    let mut ids = RequestIds::new();
    let head = read_request(raw, &client(), &mut ids, &mut edits)?.ok_or(Refusal {
        status: 0,
        reason: "partial",
    })?;
    let mut text = Vec::new();
    for range in &edits.kept {
        text.extend_from_slice(&raw[range.clone()]);
    }
    text.extend_from_slice(&edits.added);
    Ok((String::from_utf8_lossy(&text).into_owned(), head, edits))
}

fn refusal(raw: &[u8]) -> Refusal {
    match forwarded(raw) {
        Err(refusal) => refusal,
        Ok((text, ..)) => panic!("forwarded: {text}"),
    }
}

#[test]
fn a_plain_get_keeps_its_bytes_and_gets_the_forwarding_lines() {
    let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nX-Request-Id: abc-123\r\n\r\n";
    let (text, head, edits) = forwarded(raw).unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(
        text,
        "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nX-Request-Id: abc-123\r\n\
         X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: example.test\r\n\
         Forwarded: for=192.0.2.7;proto=http;host=\"example.test\"\r\n\r\n"
    );
    assert_eq!(edits.kept.len(), 1, "untouched lines are one range");
    assert_eq!(edits.request_id, b"abc-123");
    assert_eq!(head.head_len, raw.len());
    assert_eq!(head.framing, Framing::Empty);
    assert!(head.keep_alive && !head.http10 && !head.is_head);
}

#[test]
fn hop_by_hop_lines_and_connection_options_are_dropped() {
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\n\
        TE: trailers\r\nX-Secret: 1\r\nProxy-Connection: x\r\nTrailer: y\r\nAccept: a\r\n\r\n";
    let (text, head, edits) = forwarded(raw).unwrap_or_else(|r| panic!("{r:?}"));
    assert!(text.starts_with("GET / HTTP/1.1\r\nHost: h\r\nAccept: a\r\nX-Forwarded-For: "));
    for gone in [
        "Connection",
        "Keep-Alive",
        "TE:",
        "X-Secret",
        "Proxy-Connection",
        "Trailer",
    ] {
        assert!(!text.contains(gone), "{gone} left in {text}");
    }
    assert_eq!(edits.kept.len(), 2);
    assert!(head.keep_alive);
    // A made request id: 32 hex digits, in the forwarded head.
    assert_eq!(edits.request_id.len(), 32);
    let id = String::from_utf8_lossy(&edits.request_id).into_owned();
    assert!(text.contains(&format!("\r\nX-Request-Id: {id}\r\n\r\n")));
}

#[test]
fn earlier_hops_are_kept_in_the_lists_and_replaced_headers_replaced() {
    let raw =
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\
        X-Forwarded-Proto: https\r\nForwarded: for=10.0.0.1\r\nX-Request-Id: has space\r\n\r\n";
    let (text, ..) = forwarded(raw).unwrap_or_else(|r| panic!("{r:?}"));
    assert!(text.contains("X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n"));
    assert!(text.contains("Forwarded: for=10.0.0.1, for=192.0.2.7;proto=http;host=\"h\"\r\n"));
    assert!(!text.contains("https") && !text.contains("has space"));
    assert_eq!(text.matches("X-Forwarded-Proto").count(), 1);
}

#[test]
fn framing_of_request_bodies() {
    let (_, head, _) = forwarded(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n")
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(head.framing, Framing::Length(12));
    let (text, head, _) =
        forwarded(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(head.framing, Framing::Chunked);
    assert!(
        text.contains("Transfer-Encoding: Chunked\r\n"),
        "passed through"
    );
    let (_, head, _) =
        forwarded(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
            .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(
        head.framing,
        Framing::Length(3),
        "the same length twice is one length"
    );
    let (text, head, _) = forwarded(
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .unwrap_or_else(|r| panic!("{r:?}"));
    assert!(head.expect_continue && !text.contains("Expect"));
}

#[test]
fn http10_keeps_alive_only_when_asked_and_asks_the_upstream_to() {
    let (text, head, _) = forwarded(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert!(head.http10 && head.keep_alive);
    assert!(text.ends_with("Connection: keep-alive\r\n\r\n"));
    let (_, head, _) = forwarded(b"GET / HTTP/1.0\r\n\r\n").unwrap_or_else(|r| panic!("{r:?}"));
    assert!(!head.keep_alive);
    let (_, head, _) = forwarded(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert!(!head.keep_alive);
}

#[test]
fn smuggling_shapes_and_unusual_requests_are_refused() {
    let cases: [(&[u8], u16, &str); 15] = [
        (b"GET /a?b\"c HTTP/1.1\r\nHost: h\r\n\r\n", 400, "unusual bytes in the target: hyper's"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "Content-Length and Transfer-Encoding"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "differing Content-Length"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n", 400, "bad Content-Length"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n", 400, "bad Content-Length"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400, "transfer coding other than chunked"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "repeated Transfer-Encoding"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "transfer coding other than chunked"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400, "upgrade or CONNECT: hyper's"),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 400, "upgrade or CONNECT: hyper's"),
        (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400, "absolute-form target: hyper's"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "Host missing or repeated"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host missing or repeated"),
        (b"GET / HTTP/1.1\nHost: h\n\n", 400, "bare LF"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: teapot\r\n\r\n", 417, "unknown expectation"),
    ];
    for (raw, status, reason) in cases {
        let refused = refusal(raw);
        assert_eq!(
            (refused.status, refused.reason),
            (status, reason),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    // httparse's own refusals: obs-fold, bad bytes, too many headers.
    assert_eq!(
        refusal(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n").status,
        400
    );
    assert_eq!(
        refusal(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: \x01\r\n\r\n").status,
        400
    );
    assert_eq!(
        refusal(b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n").status,
        400
    );
    let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for index in 0..MAX_HEADERS {
        many.extend_from_slice(format!("X-{index}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(refusal(&many).status, 431);
}

#[test]
fn an_incomplete_head_asks_for_more() {
    let mut edits = Edits::default();
    let read = read_request(
        b"GET / HTTP/1.1\r\nHost: h\r\n",
        &client(),
        &mut RequestIds::new(),
        &mut edits,
    );
    assert_eq!(read, Ok(None));
}

fn request_of(raw: &[u8], edits: &mut Edits) -> RequestHead {
    match read_request(raw, &client(), &mut RequestIds::new(), edits) {
        Ok(Some(head)) => head,
        other => panic!("{other:?}"),
    }
}

fn response_of(raw: &[u8], request: &RequestHead, edits: &mut Edits) -> (String, ResponseHead) {
    let head = match read_response(raw, request, edits) {
        Ok(Some(head)) => head,
        other => panic!("{other:?}"),
    };
    let mut text = Vec::new();
    for range in &edits.kept {
        text.extend_from_slice(&raw[range.clone()]);
    }
    text.extend_from_slice(&edits.added);
    (String::from_utf8_lossy(&text).into_owned(), head)
}

#[test]
fn responses_are_forwarded_with_the_request_id_and_without_hop_by_hop_lines() {
    let mut edits = Edits::default();
    let request = request_of(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: r1\r\n\r\n",
        &mut edits,
    );
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\n\r\nok";
    let (text, head) = response_of(raw, &request, &mut edits);
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: r1\r\n\r\n"
    );
    assert_eq!(head.framing, Framing::Length(2));
    assert!(head.upstream_keep_alive && head.client_keep_alive && !head.interim);
    assert_eq!(head.head_len, raw.len() - 2);
}

#[test]
fn framing_of_responses() {
    let mut edits = Edits::default();
    let get = request_of(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &mut edits);
    let (_, head) = response_of(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        &get,
        &mut edits,
    );
    assert_eq!(head.framing, Framing::Chunked);
    let (text, head) = response_of(b"HTTP/1.1 200 OK\r\n\r\n", &get, &mut edits);
    assert_eq!(head.framing, Framing::UntilClose);
    assert!(!head.upstream_keep_alive && !head.client_keep_alive);
    assert!(text.contains("Connection: close\r\n"));
    let (_, head) = response_of(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        &get,
        &mut edits,
    );
    assert_eq!(head.framing, Framing::Empty);
    let (_, head) = response_of(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
        &get,
        &mut edits,
    );
    assert!(!head.upstream_keep_alive && head.client_keep_alive);
    let (_, head) = response_of(b"HTTP/1.1 100 Continue\r\n\r\n", &get, &mut edits);
    assert!(head.interim);

    let head_request = request_of(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", &mut edits);
    let (text, head) = response_of(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n",
        &head_request,
        &mut edits,
    );
    assert_eq!(head.framing, Framing::Empty);
    assert!(text.contains("Content-Length: 1024"));

    let old = request_of(
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        &mut edits,
    );
    let (text, head) = response_of(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
        &old,
        &mut edits,
    );
    assert!(head.client_keep_alive && text.ends_with("Connection: keep-alive\r\n\r\n"));
}

#[test]
fn ambiguous_responses_are_refused() {
    let mut edits = Edits::default();
    let get = request_of(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &mut edits);
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
    ] {
        let refused = read_response(raw, &get, &mut edits);
        assert!(
            matches!(refused, Err(Refusal { status: 502, .. })),
            "{}: {refused:?}",
            String::from_utf8_lossy(raw)
        );
    }
}
