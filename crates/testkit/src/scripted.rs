//! Upstreams scripted for the gateway's HTTP tests, on 127.0.0.1 port 0: one that answers each
//! head with the bytes a script gives, one that sends an interim answer before every final
//! one, one that echoes what it was sent.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener on 127.0.0.1, port 0, and its address.
async fn listen() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|error| panic!("bind: {error}"));
    let address = listener
        .local_addr()
        .unwrap_or_else(|error| panic!("address: {error}"));
    (listener, address)
}

/// An upstream that answers every request head (it reads no body) with the bytes `answer`
/// gives for the head (request line and fields, without the empty line), closing the
/// connection after them when it says so: for answers no HTTP library would write.
pub async fn head_answering_upstream(
    answer: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static,
) -> SocketAddr {
    let (listener, address) = listen().await;
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = std::sync::Arc::clone(&answer);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                        pending.drain(..end + 4);
                        let (bytes, close) = answer(&head);
                        if stream.write_all(&bytes).await.is_err() || close {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => pending.extend_from_slice(&chunk[..read]),
                    }
                }
            });
        }
    });
    address
}

/// An upstream that answers every request head with `103 Early Hints` (`Link: </s.css>;
/// rel=preload`) and then `200 ok` (with `connection: keep-alive`), reading no body.
pub async fn early_hints_upstream() -> SocketAddr {
    head_answering_upstream(|_| {
        let answer = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
                       HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok";
        (answer.to_vec(), false)
    })
    .await
}

/// An upstream (hyper's HTTP/1.1 server) answering `/big/N` with N bytes of `x`, `/204` with
/// `204 No Content`, anything else with `METHOD PATH BODY-LENGTH` once it has read the whole
/// body.
pub async fn echo_upstream() -> SocketAddr {
    let (listener, address) = listen().await;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service =
                hyper::service::service_fn(|request: http::Request<Incoming>| async move {
                    let method = request.method().clone();
                    let path = request.uri().path().to_owned();
                    if path == "/204" {
                        let mut answer = http::Response::new(Full::new(Bytes::new()));
                        *answer.status_mut() = http::StatusCode::NO_CONTENT;
                        return Ok(answer);
                    }
                    if let Some(size) = path.strip_prefix("/big/") {
                        let size: usize = size.parse().unwrap_or(0);
                        let body = Bytes::from(vec![b'x'; size]);
                        return Ok(http::Response::new(Full::new(body)));
                    }
                    let body = request.into_body().collect().await?.to_bytes();
                    let text = format!("{method} {path} {}", body.len());
                    Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(text))))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    address
}
