//! HTTP/2 clients, served with the `h2` crate (`http2`) over real sockets: the upstream's
//! interim (1xx) answers reach them before the final answer (hyper's server could not send
//! them), request and answer bodies larger than the flow-control windows cross whole, and a
//! connection whose preface arrives in cleartext (prior knowledge) is served the same way; a
//! drain finishes the stream in flight and tells the client to go away.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use bytes::Bytes;
use sekisho_testkit::{early_hints_upstream, echo_upstream, InProcess};

fn config(early_hints: SocketAddr, echo: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.hints]\ntargets = [\"{early_hints}\"]\n[upstreams.echo]\ntargets = [\"{echo}\"]\n\
         [[routes]]\nname = \"hints\"\npath_prefix = \"/page\"\nupstream = \"hints\"\n\
         [[routes]]\nname = \"echo\"\npath_prefix = \"/\"\nupstream = \"echo\"\n\
         max_body_bytes = 16777216\n"
    )
}

/// An HTTP/2 client over cleartext TCP (prior knowledge).
async fn h2_client(address: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Sends `body` in pieces as the stream's window allows.
async fn send_body(stream: &mut h2::SendStream<Bytes>, mut body: Bytes) {
    while !body.is_empty() {
        stream.reserve_capacity(body.len());
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .unwrap()
            .unwrap();
        let piece = body.split_to(granted.min(body.len()));
        stream.send_data(piece, body.is_empty()).unwrap();
    }
}

/// The whole body of an answer, the window given back as it is read.
async fn read_body(mut body: h2::RecvStream) -> Bytes {
    let mut all = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        all.extend_from_slice(&data);
    }
    Bytes::from(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_gets_the_upstreams_interim_answers_first() {
    let gw = InProcess::start(&config(early_hints_upstream().await, echo_upstream().await)).await;
    let client = h2_client(gw.address).await;
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get("http://x/page").body(()).unwrap();
    let (mut response, _) = client.send_request(request, true).unwrap();
    let interim = std::future::poll_fn(|cx| response.poll_informational(cx))
        .await
        .expect("an interim answer")
        .unwrap();
    assert_eq!(interim.status(), 103);
    assert_eq!(interim.headers()["link"], "</s.css>; rel=preload");
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("connection").is_none(),
        "a connection-specific field reached an HTTP/2 client: {:?}",
        response.headers()
    );
    assert!(response.headers().contains_key("date"));
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(read_body(response.into_body()).await, "ok");
    gw.stop().await;

    // hyper's server, which serves cleartext HTTP/2 when the owned path is off, cannot send
    // them: the client sees only the final answer.
    let text = config(early_hints_upstream().await, echo_upstream().await).replace(
        "access_log = false\n",
        "access_log = false\nowned_http1 = false\n",
    );
    let gw = InProcess::start(&text).await;
    let mut client = h2_client(gw.address).await.ready().await.unwrap();
    let request = http::Request::get("http://x/page").body(()).unwrap();
    let (mut response, _) = client.send_request(request, true).unwrap();
    let interim = std::future::poll_fn(|cx| response.poll_informational(cx)).await;
    assert!(
        interim.is_none(),
        "hyper sent an interim answer: {interim:?}"
    );
    assert_eq!(response.await.unwrap().status(), 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_larger_than_the_windows_cross_whole() {
    let gw = InProcess::start(&config(early_hints_upstream().await, echo_upstream().await)).await;
    let client = h2_client(gw.address).await;
    // 3 MiB up: more than the gateway's 1 MiB windows, so they must be given back as read.
    let mut sender = client.clone().ready().await.unwrap();
    let size = 3 * 1024 * 1024;
    let request = http::Request::post("http://x/upload")
        .header("content-length", size.to_string())
        .body(())
        .unwrap();
    let (response, mut stream) = sender.send_request(request, false).unwrap();
    send_body(&mut stream, Bytes::from(vec![b'y'; size])).await;
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        read_body(response.into_body()).await,
        format!("POST /upload {size}")
    );
    // 1 MiB down: more than the client's 64 KiB window, so the gateway must wait for it.
    let mut sender = client.ready().await.unwrap();
    let size = 1024 * 1024;
    let request = http::Request::get(format!("http://x/big/{size}"))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], size.to_string());
    let body = read_body(response.into_body()).await;
    assert_eq!(body.len(), size);
    assert!(body.iter().all(|b| *b == b'x'));
    gw.stop().await;
}

/// Twenty streams opened at once on one connection each get their own answer; an answer to
/// HEAD ends with its head, and so does a 204, without a content-length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_answered_side_by_side_and_heads_have_no_body() {
    let gw = InProcess::start(&config(early_hints_upstream().await, echo_upstream().await)).await;
    let client = h2_client(gw.address).await;
    let mut pending = Vec::new();
    for n in 0..20 {
        let mut sender = client.clone().ready().await.unwrap();
        let request = http::Request::get(format!("http://x/s{n}"))
            .body(())
            .unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        pending.push((n, response));
    }
    for (n, response) in pending {
        let response = response.await.unwrap();
        assert_eq!(
            read_body(response.into_body()).await,
            format!("GET /s{n} 0")
        );
    }
    let mut sender = client.ready().await.unwrap();
    let request = http::Request::head("http://x/big/100").body(()).unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.body().is_end_stream(),
        "an answer to HEAD had a body"
    );
    // A 204 gets no content-length (RFC 9110 §8.6) and ends with its head.
    let mut sender = sender.ready().await.unwrap();
    let request = http::Request::get("http://x/204").body(()).unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 204);
    assert!(
        !response.headers().contains_key("content-length"),
        "{:?}",
        response.headers()
    );
    assert!(response.body().is_end_stream());
    gw.stop().await;
}

/// A drain on an HTTP/2 connection: the stream in flight is finished, the client is told to
/// open no more (GOAWAY), and the listener stops accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_the_http2_stream_in_flight() {
    let slow = sekisho_testkit::chaos_upstream("slow").await;
    slow.handle.set(sekisho_load::ChaosState {
        latency_ms: 400,
        ..sekisho_load::ChaosState::default()
    });
    let gw = InProcess::start(&config(early_hints_upstream().await, slow.address)).await;
    let address = gw.address;
    let client = h2_client(address).await;
    let mut sender = client.clone().ready().await.unwrap();
    let request = http::Request::get("http://x/drain").body(()).unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    let in_flight = tokio::spawn(async move {
        let response = response.await.unwrap();
        (response.status(), read_body(response.into_body()).await)
    });
    while slow.handle.requests() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    gw.stop().await;
    let (status, _) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the stream in flight was finished");
    // Told to go away: a new stream on the same connection is refused.
    let refused = match client.ready().await {
        Ok(mut sender) => sender
            .send_request(http::Request::get("http://x/late").body(()).unwrap(), true)
            .map(|_| ())
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a new stream was taken after the drain");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "no longer accepting"
    );
}
